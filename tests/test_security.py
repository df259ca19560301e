"""Who may join and who may operate, with real processes: the join token, each CP's own secret,
the operator token, and the audit log that records all of it."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import stat

import pytest

from evcharge.devtools.supervisor import Child
from evcharge.runtime.ports import free_ports
from tests.harness import Credentials, System, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes]

JOIN, OPERATOR = "join-token-for-tests", "operator-token-for-tests"


@pytest.fixture
def secured(system):
    system.secure(Credentials(JOIN, OPERATOR))
    system.start_central()
    return system


def monitor(system: System, cp, name: str, *args: str) -> Child:
    return Child(
        name,
        ["monitor", "--cp-id", cp.cp_id, "--engine", f"127.0.0.1:{cp.engine_port}",
         "--central", f"127.0.0.1:{system.tcp_port}", *args],
        system.logs / f"{name}.log",
    ).start()  # fmt: skip


def audit_lines(system: System) -> list[dict]:
    return [json.loads(line) for line in (system.state_dir / "audit.log").read_text().splitlines()]


def test_a_cp_joins_with_the_token_and_keeps_its_own_secret_of_which_central_keeps_a_hash(secured) -> None:
    system = secured
    cp = system.add_cp(system.ident("CP-001"))
    secret_file = system.state_dir / f"monitor-{cp.cp_id}.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert JOIN not in secret and len(secret) >= 40
    with sqlite3.connect(f"file:{system.state_dir / 'central.sqlite'}?mode=ro", uri=True) as db:
        stored = db.execute("SELECT secret_hash FROM cp_credentials WHERE cp_id = ?", (cp.cp_id,)).fetchone()
        dump = "\n".join(db.iterdump())
    assert stored == (hashlib.sha256(secret.encode()).hexdigest(),), "only a SHA-256 of the secret"
    assert secret not in dump, "the secret itself is nowhere in central's database"

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
    system.monitor_overrides = {"join_token": "guess"}
    stranger = system.add_cp(system.ident("CP-666"), wait=False)
    assert stranger.monitor.wait(30) == 2
    assert "needs the operator's join token" in stranger.monitor.output()
    assert system.status(stranger.cp_id) is None, "never registered"
    assert system.status(live.cp_id) == "ON"


def test_forgetting_a_cp_forgets_its_secret_and_it_may_join_again_as_new(secured) -> None:
    system = secured
    cp = system.add_cp(system.ident("CP-001"))
    cp.monitor.stop()
    system.wait_status(cp.cp_id, "DISCONNECTED", 10)
    assert system.request("DELETE", f"/cp/{cp.cp_id}", token=OPERATOR)[0] == 200
    with sqlite3.connect(f"file:{system.state_dir / 'central.sqlite'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT COUNT(*) FROM cp_credentials WHERE cp_id = ?", (cp.cp_id,)).fetchone() == (
            0,
        )
    # A new monitor for the id, with a secret of its own and the join token, joins as a new CP.
    (system.state_dir / f"monitor-{cp.cp_id}.secret").unlink()
    cp.monitor.start()
    system.wait_status(cp.cp_id, "ON", 15)


def test_every_operator_change_over_http_needs_the_operator_token(secured) -> None:
    system = secured
    cp = system.add_cp(system.ident("CP-001"))
    other = system.add_cp(system.ident("CP-002"))
    changes = [
        ("POST", f"/cp/{cp.cp_id}/stop"),
        ("POST", f"/cp/{cp.cp_id}/resume"),
        ("POST", "/cp/stop-all"),
        ("POST", "/cp/resume-all"),
        ("DELETE", f"/cp/{other.cp_id}"),
    ]
    for method, path in changes:
        for token in (None, "wrong-token", ""):
            status, body = system.request(method, path, token=token)
            assert status == 401 and "operator token" in body["message"], (method, path, token, body)
    assert {c["status"] for c in system.get("/cp")["charging_points"]} == {"ON"}, "nothing changed"
    assert system.get("/cp")["charging_points"], "reading stays open"

    status, body = system.post(f"/cp/{cp.cp_id}/stop", token=OPERATOR)
    assert status == 200 and body["status"] == "STOPPED"
    ctl = Child(
        "ctl",
        ["ctl", "cp", "resume", cp.cp_id, "--central-url", system.url, "--token", OPERATOR],
        system.logs / "ctl.log",
    ).start()
    assert ctl.wait(20) == 0, ctl.output()
    assert system.status(cp.cp_id) == "ON"


def test_the_audit_log_has_a_line_of_each_kind_with_who_and_from_where(secured) -> None:
    system = secured
    system.max_session_s = 2
    cp = system.add_cp(system.ident("CP-001"))
    system.monitor_overrides = {"join_token": "guess"}
    stranger = system.add_cp(system.ident("CP-666"), wait=False)
    assert stranger.monitor.wait(30) == 2
    system.post(f"/cp/{cp.cp_id}/stop")  # refused: no token
    system.post(f"/cp/{cp.cp_id}/stop", token=OPERATOR)
    system.post(f"/cp/{cp.cp_id}/resume", token=OPERATOR)
    system.wait_status(cp.cp_id, "ON", 10)
    alice = system.ident("driver-alice")
    system.start_driver(alice, [cp.cp_id, system.ident("CP-nowhere")], interval_s=0.2)
    system.wait_driver_done(alice, 60)
    wait_until(
        lambda: any(a["action"] == "session_end" for a in audit_lines(system)),
        10,
        "the session's end audited",
    )

    lines = audit_lines(system)
    assert all({"at", "who", "from", "action", "result"} <= set(a) for a in lines)
    by = {(a["action"], a["result"].split(":")[0]): a for a in lines}
    assert by[("register", "ok")]["who"] == cp.cp_id and by[("register", "ok")]["from"].startswith(
        "127.0.0.1:"
    )
    assert (
        by[("register", "refused")]["who"] == stranger.cp_id
        and "bad_token" in by[("register", "refused")]["result"]
    )
    refused_http = by[(f"/cp/{cp.cp_id}/stop", "refused")]
    assert refused_http["who"] == "unknown" and refused_http["from"] == "127.0.0.1"
    assert by[("stop_cp", "ok")]["who"] == "http" and by[("stop_cp", "ok")]["from"] == "127.0.0.1"
    assert by[("resume_cp", "ok")]["cp"] == cp.cp_id
    assert by[("charge", "ok")]["who"] == alice and by[("charge", "ok")]["from"] == "kafka"
    assert by[("charge", "denied")]["who"] == alice and "unknown_cp" in by[("charge", "denied")]["result"]
    end = by[("session_end", "ok")]
    assert end["who"] == alice and end["from"] == cp.cp_id and end["wh"] > 0


def test_central_refuses_to_start_with_only_one_of_the_two_tokens(system) -> None:
    for tokens in (["--join-token", JOIN], ["--operator-token", OPERATOR]):
        args = ["central", "--no-panel", "--require-auth", "--kafka", system.kafka,
                "--store", str(system.root / "c.sqlite"), *tokens]  # fmt: skip
        process = Child("central-half", args, system.logs / "half.log").start()
        assert process.wait(30) == 2
        assert "needs --join-token and --operator-token" in process.output()


def test_central_on_a_network_address_refuses_to_start_without_tokens(system) -> None:
    args = [
        "central",
        "--no-panel",
        "--host",
        "0.0.0.0",
        "--kafka",
        system.kafka,
        "--store",
        str(system.root / "c.sqlite"),
    ]
    process = Child("central-open", args, system.logs / "open.log").start()
    assert process.wait(30) == 2
    assert "--join-token and --operator-token" in process.output()


def test_central_on_a_network_address_needs_tls_and_kafka_credentials_or_insecure(system) -> None:
    args = ["central", "--no-panel", "--host", "0.0.0.0", "--kafka", system.kafka,
            "--store", str(system.root / "c.sqlite"),
            "--join-token", JOIN, "--operator-token", OPERATOR]  # fmt: skip
    process = Child("central-plain", args, system.logs / "plain.log").start()
    assert process.wait(30) == 2
    said = process.output()
    assert "needs TLS (--cert, --key, --ca)" in said and "--kafka-user" in said and "--insecure" in said


def test_a_gateway_on_a_network_address_names_what_it_lacks_and_serves_only_if_told_insecure(system) -> None:
    port = free_ports(1)[0]
    args = ["gateway", "--host", "0.0.0.0", "--port", str(port), "--metrics-port", "0",
            "--kafka", system.kafka, "--state-dir", str(system.root / "gateway")]  # fmt: skip
    for name, given in (("gateway-open", []), ("gateway-tokenless", ["--insecure"])):
        refused = Child(name, [*args, *given], system.logs / f"{name}.log").start()
        assert refused.wait(30) == 2
        assert "--join-token" in refused.output(), "a trusted network does not waive the chargers' token"
    refused = Child("gateway-plain", [*args, "--join-token", "J"], system.logs / "gateway-plain.log").start()
    assert refused.wait(30) == 2
    said = refused.output()
    for need in ("--cert, --key", "--ca", "--kafka-user", "--insecure"):
        assert need in said, need
    assert not (system.root / "gateway").exists(), "refused before it opened a store"

    trusted = Child(
        "gateway-trusted", [*args, "--join-token", "J", "--insecure"], system.logs / "gateway-trusted.log"
    ).start()
    try:
        wait_until(lambda: "gateway ready" in trusted.output() or not trusted.alive, 60, "the gateway")
        assert trusted.alive, trusted.output()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # its OCPP port answers
    finally:
        assert trusted.stop() == 0
