"""Who may join, with real processes: the join token, each CP's own secret, the operator token,
and the audit log that records all of it."""

from __future__ import annotations

import json
import stat
import urllib.request

import pytest

from evcharge.supervisor import Child, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes]

JOIN, OPERATOR = "join-token-for-tests", "operator-token-for-tests"


@pytest.fixture
def secured(system):
    system.central_args = ["--require-auth", "--join-token", JOIN, "--operator-token", OPERATOR]
    system.monitor_args = ["--join-token", JOIN]
    system.start_central()
    return system


def monitor(system, cp, name: str, *args: str) -> Child:
    return Child(
        name,
        ["monitor", "--cp-id", cp.cp_id, "--engine", f"127.0.0.1:{cp.engine_port}",
         "--central", f"127.0.0.1:{system.tcp_port}", *args],
        system.logs / f"{name}.log",
    ).start()  # fmt: skip


def test_a_cp_joins_with_the_token_and_keeps_its_own_secret(secured) -> None:
    system = secured
    cp = system.add_cp(system.ident("CP-001"))
    secret_file = system.state_dir / f"monitor-{cp.cp_id}.secret"
    wait_until(secret_file.exists, 10, "the CP's secret on disk")
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert JOIN not in secret_file.read_text()

    # Somebody who knows the join token but not the secret cannot take the CP id over.
    impostor = monitor(
        system, cp, "impostor", "--join-token", JOIN, "--state-dir", str(system.root / "other")
    )
    assert impostor.wait(30) == 2
    assert "must register with its own secret" in impostor.output()
    assert system.status(cp.cp_id) == "ON", "the live CP is unaffected"

    # The real monitor, restarted, registers again with its secret.
    cp.monitor.kill()
    cp.monitor.start()
    system.wait_status(cp.cp_id, "ON", 15)


def test_a_new_cp_with_a_wrong_token_is_refused(secured) -> None:
    system = secured
    live = system.add_cp(system.ident("CP-001"))
    system.monitor_args = ["--join-token", "guess"]
    stranger = system.add_cp(system.ident("CP-666"), wait=False)
    assert stranger.monitor.wait(30) == 2
    assert "needs the operator's join token" in stranger.monitor.output()
    assert system.status(stranger.cp_id) is None, "never registered"
    assert system.status(live.cp_id) == "ON"


def test_changing_a_cp_over_http_needs_the_operator_token(secured) -> None:
    system = secured
    cp = system.add_cp(system.ident("CP-001"))
    status, body = system.post(f"/cp/{cp.cp_id}/stop")
    assert status == 401 and "operator token" in body["message"]
    request = urllib.request.Request(
        f"{system.url}/cp/{cp.cp_id}/stop", data=b"", method="POST",
        headers={"Authorization": f"Bearer {OPERATOR}"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.load(response)["status"] == "STOPPED"
    ctl = Child("ctl", ["ctl", "cp", "resume", cp.cp_id, "--central-url", system.url, "--token", OPERATOR],
                system.logs / "ctl.log").start()  # fmt: skip
    assert ctl.wait(20) == 0, ctl.output()
    assert system.status(cp.cp_id) == "ON"
    assert system.get("/cp")["charging_points"], "reading stays open"

    audit = [json.loads(line) for line in (system.state_dir / "audit.log").read_text().splitlines()]
    actions = [(a["action"], a["result"]) for a in audit]
    assert ("register", "ok") in actions
    assert any(a == f"/cp/{cp.cp_id}/stop" and r.startswith("refused") for a, r in actions)
    assert ("stop_cp", "ok") in actions and ("resume_cp", "ok") in actions
    assert all({"at", "who", "from", "action", "result"} <= set(a) for a in audit)


def test_central_on_a_network_address_refuses_to_start_without_tokens(system) -> None:
    args = [
        "central",
        "--no-panel",
        "--host",
        "0.0.0.0",
        "--kafka",
        system.kafka,
        "--db",
        str(system.root / "c.db"),
    ]
    child = Child("central-open", args, system.logs / "open.log").start()
    assert child.wait(30) == 2
    assert "--join-token and --operator-token" in child.output()
