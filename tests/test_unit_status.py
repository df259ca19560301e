"""Unit tests for evcharge.central.status: the CP status matrix and the denial it implies."""

from __future__ import annotations

import itertools

import pytest

from evcharge.central.status import CpStatus, cp_status, denial_for
from evcharge.protocol.messages import DenyCode, Health

OK, KO = Health.OK, Health.KO
ON, SUPPLYING, STOPPED, BROKEN, DISCONNECTED = (
    CpStatus.ON,
    CpStatus.SUPPLYING,
    CpStatus.STOPPED,
    CpStatus.BROKEN,
    CpStatus.DISCONNECTED,
)

# (monitor_connected, health, stopped, supplying) -> status; all 2 * 3 * 2 * 2 = 24 combinations.
# Precedence: DISCONNECTED > BROKEN (KO or no verdict yet) > STOPPED > SUPPLYING > ON.
MATRIX = [
    (False, None, False, False, DISCONNECTED),
    (False, None, False, True, DISCONNECTED),
    (False, None, True, False, DISCONNECTED),
    (False, None, True, True, DISCONNECTED),
    (False, OK, False, False, DISCONNECTED),
    (False, OK, False, True, DISCONNECTED),
    (False, OK, True, False, DISCONNECTED),
    (False, OK, True, True, DISCONNECTED),
    (False, KO, False, False, DISCONNECTED),
    (False, KO, False, True, DISCONNECTED),
    (False, KO, True, False, DISCONNECTED),
    (False, KO, True, True, DISCONNECTED),
    (True, None, False, False, BROKEN),
    (True, None, False, True, BROKEN),
    (True, None, True, False, BROKEN),
    (True, None, True, True, BROKEN),
    (True, OK, False, False, ON),
    (True, OK, False, True, SUPPLYING),
    (True, OK, True, False, STOPPED),
    (True, OK, True, True, STOPPED),
    (True, KO, False, False, BROKEN),
    (True, KO, False, True, BROKEN),
    (True, KO, True, False, BROKEN),
    (True, KO, True, True, BROKEN),
]


def _id(row: tuple) -> str:
    connected, health, stopped, supplying, _ = row
    return "-".join(
        [
            "conn" if connected else "disc",
            health.value if health else "nohealth",
            "stopped" if stopped else "running",
            "supplying" if supplying else "idle",
        ]
    )


def test_matrix_covers_every_combination_once() -> None:
    combos = {row[:4] for row in MATRIX}
    assert len(combos) == len(MATRIX) == 24
    assert combos == set(itertools.product([False, True], [None, OK, KO], [False, True], [False, True]))


@pytest.mark.parametrize(
    ("connected", "health", "stopped", "supplying", "expected"), MATRIX, ids=map(_id, MATRIX)
)
def test_cp_status_matrix(
    connected: bool, health: Health | None, stopped: bool, supplying: bool, expected: CpStatus
) -> None:
    status = cp_status(monitor_connected=connected, health=health, stopped=stopped, supplying=supplying)
    assert status is expected


def test_every_status_is_reachable() -> None:
    assert {row[4] for row in MATRIX} == set(CpStatus)


def test_only_a_connected_healthy_idle_running_cp_is_on() -> None:
    on = [row[:4] for row in MATRIX if row[4] is ON]
    assert on == [(True, OK, False, False)]


def test_status_values_are_the_displayed_names() -> None:
    assert [s.value for s in CpStatus] == ["ON", "SUPPLYING", "STOPPED", "BROKEN", "DISCONNECTED"]


def test_cp_status_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        cp_status(True, OK, False, False)  # type: ignore[misc]


# -------------------------------------------------------------- denials ----

DENIALS = [
    (SUPPLYING, DenyCode.BUSY, "busy"),
    (STOPPED, DenyCode.STOPPED, "stopped"),
    (BROKEN, DenyCode.BROKEN, "broken"),
    (DISCONNECTED, DenyCode.DISCONNECTED, "not connected"),
]


def test_on_is_never_denied() -> None:
    assert denial_for("CP-1", ON) is None


@pytest.mark.parametrize(("status", "code", "word"), DENIALS, ids=[d[0].value for d in DENIALS])
def test_every_other_status_is_denied_with_its_code(status: CpStatus, code: DenyCode, word: str) -> None:
    denial = denial_for("CP-7", status)
    assert denial is not None
    got_code, reason = denial
    assert got_code is code
    assert "CP-7" in reason
    assert word in reason


def test_reasons_name_the_cp_asked_about() -> None:
    for status in (SUPPLYING, STOPPED, BROKEN, DISCONNECTED):
        for cp_id in ("A", "MAD-042", "cp_x.1"):
            denial = denial_for(cp_id, status)
            assert denial is not None
            assert denial[1].startswith(cp_id + " ")


def test_unknown_cp_when_there_is_no_status() -> None:
    denial = denial_for("GHOST-9", None)
    assert denial is not None
    code, reason = denial
    assert code is DenyCode.UNKNOWN_CP
    assert "GHOST-9" in reason
    assert "not a known" in reason


def test_every_status_has_a_decision() -> None:
    for status in CpStatus:
        denial = denial_for("CP-1", status)
        assert (denial is None) == (status is ON)


def test_cp_ids_with_braces_do_not_break_the_reason() -> None:
    # The reason is a format template; the CP id must be inserted, never interpreted.
    denial = denial_for("{cp}{0}", BROKEN)
    assert denial == (DenyCode.BROKEN, "{cp}{0} is broken")


@pytest.mark.parametrize(
    ("connected", "health", "stopped", "supplying", "expected"), MATRIX, ids=map(_id, MATRIX)
)
def test_matrix_and_denial_agree(
    connected: bool, health: Health | None, stopped: bool, supplying: bool, expected: CpStatus
) -> None:
    status = cp_status(monitor_connected=connected, health=health, stopped=stopped, supplying=supplying)
    denial = denial_for("CP-1", status)
    may_authorise = connected and health is OK and not stopped and not supplying
    assert (denial is None) == may_authorise
