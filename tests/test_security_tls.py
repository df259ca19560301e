"""TLS on central's ports with real processes: `evcharge certs init` makes the CA and the
certificates; a monitor and `evcharge ctl` that trust the CA get in, and a certificate of
another CA, for another host or expired is refused in one line, with no retries."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from evcharge.devtools.certs import LocalCa
from evcharge.devtools.supervisor import Child
from evcharge.runtime.ports import port_answers
from tests.harness import Credentials, System, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes]

JOIN, OPERATOR = "join-token-for-tests", "operator-token-for-tests"


def certs_init(system: System, folder: Path) -> None:
    # Central's certificate names 127.0.0.1 only: reached as "localhost" it is another host.
    made = Child(
        f"certs-{folder.name}",
        ["certs", "init", "--dir", str(folder), "--host", "127.0.0.1"],
        system.logs / f"certs-{folder.name}.log",
    ).start()
    assert made.wait(30) == 0, made.output()


def monitor(system: System, name: str, central: str, ca: Path) -> Child:
    return Child(
        name,
        ["monitor", "--cp-id", system.ident("CP-009"), "--engine", "127.0.0.1:9",
         "--central", central, "--ca", str(ca), "--join-token", JOIN,
         "--state-dir", str(system.root / name)],
        system.logs / f"{name}.log",
    ).start()  # fmt: skip


def refused_once(process: Child, why: str) -> None:
    assert process.wait(30) == 2, process.output()
    lines = [line for line in process.output().splitlines() if "TLS:" in line]
    assert len(lines) == 1, lines
    assert why in lines[0], lines[0]


def ctl_list(system: System, ca: Path | None) -> Child:
    args = ["ctl", "cp", "list", "--central-url", system.url, *(["--ca", str(ca)] if ca else [])]
    return Child("ctl", args, system.logs / "ctl.log").start()


def test_central_speaks_tls_and_refuses_another_ca_another_host_and_an_expired_certificate(
    system: System,
) -> None:
    tls = system.root / "tls"
    certs_init(system, tls)
    assert (tls / "central.key").stat().st_mode & 0o077 == 0, "keys are the owner's alone"
    system.secure(Credentials(JOIN, OPERATOR, tls_dir=tls))
    system.start_central()
    assert system.url.startswith("https://")
    cp = system.add_cp(system.ident("CP-001"))
    listed = ctl_list(system, tls / "ca.pem")
    assert listed.wait(20) == 0 and cp.cp_id in listed.output(), listed.output()
    stranger = ctl_list(system, None)  # the system's CAs do not know ours
    assert stranger.wait(20) == 1 and "is not trusted" in stranger.output(), stranger.output()

    other = system.root / "other-tls"
    certs_init(system, other)
    at = f"127.0.0.1:{system.tcp_port}"
    refused_once(monitor(system, "monitor-other-ca", at, other / "ca.pem"), "not trusted")
    refused_once(
        monitor(system, "monitor-other-host", f"localhost:{system.tcp_port}", tls / "ca.pem"),
        "localhost",
    )
    assert system.status(cp.cp_id) == "ON", "the CP that trusts the CA is unaffected"

    # The same central, restarted with a certificate of our CA that expired yesterday.
    yesterday = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    expired = LocalCa(tls).issue("expired", ("127.0.0.1",), days=1, valid_from=yesterday)
    assert system.central is not None
    system.central.stop()
    system.central = system.central_child(cert=expired.cert, key=expired.key).start()
    wait_until(lambda: port_answers("127.0.0.1", system.tcp_port), 30, "central's port")
    refused_once(monitor(system, "monitor-expired", at, tls / "ca.pem"), "expired")
    late = ctl_list(system, tls / "ca.pem")
    assert late.wait(20) == 1 and "expired" in late.output(), late.output()

    # Central told each refused handshake to its audit log.
    audit = (system.state_dir / "audit.log").read_text()
    assert audit.count('"action": "tls_handshake"') >= 3, audit
