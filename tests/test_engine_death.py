"""A dead engine is seen from the kernel closing its health connection, not at the next check.

The monitor keeps one connection to its engine's health port. When the engine
process dies the kernel closes it at once; the monitor checks straight away,
and confirms with its failed checks a fraction of a second apart (refused
connections are certain). Here the scheduled check is a minute away, so only
that reaction can turn the CP BROKEN before it: the wait below is far shorter.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.processes]

CHECK_INTERVAL_S = 60.0


def test_a_sigkilled_engine_is_broken_long_before_the_next_scheduled_check(system) -> None:
    system.monitor_overrides = {**system.monitor_overrides, "check_interval_s": CHECK_INTERVAL_S}
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    cp.engine.kill()  # SIGKILL: no goodbye, only the kernel closing its sockets
    system.wait_status(cp.cp_id, "BROKEN", CHECK_INTERVAL_S / 3, since=cp.engine.signalled_at)
    # The confirmation is kept: the monitor said BROKEN after its threshold of failed checks.
    assert "engine BROKEN after 3 failed checks" in cp.monitor.output()
    cp.engine.start()
    # Refused checks go on at the confirming pace, so the engine is seen back well before a minute too.
    system.wait_status(cp.cp_id, "ON", CHECK_INTERVAL_S / 3)
