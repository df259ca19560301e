"""Network partitions, for real: the system spread over hosts made of network namespaces, one
host's link cut mid-session (packets vanish: no RST, no ICMP), then healed.

Hosts: `kafka` (the broker), `central`, `site` (a CP's engine and monitor), `car` (a
driver). Each process binds its own host's address; the test itself reaches them over
an observer link. Expected for every cut: DISCONNECTED at central within the heartbeat
timeout where central can see it, the supply going on at the CP, everything delivered
after the heal, one ticket per session with the meter's figures.

In a secure run every host's address is in the certificates, so the links are cut in a
system with TLS, SCRAM and signatures on, like every other scenario's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from evcharge.devtools.certs import DEFAULT_HOSTS
from evcharge.devtools.kafka import LocalBroker
from evcharge.devtools.netns import Network, unavailable
from evcharge.devtools.probes import engine_status
from evcharge.devtools.supervisor import Child
from evcharge.devtools.system import Place
from tests.chaos.conftest import Scenario
from tests.chaos.secure_mode import SECURE, secure_broker
from tests.harness import Credentials, System, wait_until

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.processes,
    pytest.mark.chaos,
    pytest.mark.skipif(unavailable() is not None, reason=f"network namespaces: {unavailable()}"),
]

HEARTBEAT_TIMEOUT_S = 3.0
# The heartbeat watch looks every 0.25 s and the test polls central every 10 ms:
# DISCONNECTED is due at the timeout, this much later on a busy 2-core machine at most.
WATCH_SLACK_S = 1.5
BOUND_S = 60.0


@dataclass(frozen=True)
class Lan:
    network: Network
    bootstrap: str
    credentials: Credentials | None  # a secure run's: certificates name every host's address


@pytest.fixture(scope="module")
def lan(tmp_path_factory) -> Iterator[Lan]:
    """The four hosts, and the broker running on `kafka` (the secure one in a secure run);
    removed after the module."""
    with Network(["kafka", "central", "site", "car"]) as network:
        kafka = network.host("kafka")
        where = {
            "host": kafka.ip,
            "port": 9092,
            "controller_port": 9093,
            "command_prefix": kafka.prefix,
        }
        data_dir = tmp_path_factory.mktemp("lan-kafka")
        credentials = None
        if SECURE:
            hosts = (*DEFAULT_HOSTS, *(host.ip for host in network.hosts))
            secured = secure_broker(tmp_path_factory.mktemp("lan-tls"), data_dir, hosts, **where)
            broker, credentials = secured.broker, secured.credentials
        else:
            broker = LocalBroker(data_dir=data_dir, **where)
        broker.start(timeout_s=120)
        try:
            yield Lan(network, broker.bootstrap, credentials)
        finally:
            broker.stop()


@pytest.fixture
def system(lan: Lan, tmp_path) -> Iterator[System]:
    network, bootstrap = lan.network, lan.bootstrap
    placed = System(
        tmp_path,
        bootstrap,
        central_place=Place(network.host("central").ip, tuple(network.host("central").prefix)),
        cp_place=Place(network.host("site").ip, tuple(network.host("site").prefix)),
        driver_place=Place(network.host("car").ip, tuple(network.host("car").prefix)),
    )
    placed.central_overrides = {"heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S}
    if lan.credentials is not None:
        placed.secure(lan.credentials)
    else:
        # A lab network of our own, beyond loopback: said outright, as central requires.
        placed.central_overrides |= {"require_auth": False, "insecure": True}
    yield placed
    placed.stop_all()


def readings_recorded(system: System) -> int:
    return max((s["seq"] for cp in system.cps.values() for s in cp.engine_sessions().values()), default=0)


def charging(system: System, driver_id: str) -> bool:
    return any(e["event"] == "progress" and e["seq"] > 0 for e in system.events(driver_id))


def start_one_session(system: System, session_s: float) -> tuple[str, str]:
    system.max_session_s = session_s
    system.start_central()
    cp = system.add_cp(system.ident("CP-001"))
    alice = system.ident("driver-alice")
    system.start_driver(alice, [cp.cp_id])
    wait_until(lambda: charging(system, alice), 30, "alice charging")
    return cp.cp_id, alice


def test_a_cp_cut_off_mid_session_shows_disconnected_keeps_supplying_and_delivers_everything(
    system: System, lan, scenario: Scenario
) -> None:
    network = lan.network
    scenario.name = "partition: the CP's host cut"
    cp_id, alice = start_one_session(system, session_s=14)
    cut_at = scenario.mark("fault_at")
    network.cut(network.host("site"))
    try:
        detection = system.wait_status(cp_id, "DISCONNECTED", BOUND_S, since=cut_at)
        scenario.mark("detected_at")
        assert detection < HEARTBEAT_TIMEOUT_S + WATCH_SLACK_S, f"DISCONNECTED after {detection:.2f} s"
        recorded = readings_recorded(system)
        wait_until(lambda: readings_recorded(system) >= recorded + 3, 20, "the engine metering on, cut off")
        assert system.get(f"/cp/{cp_id}")["session"] is not None, "central keeps the session open"
    finally:
        scenario.mark("restart_at")
        network.heal(network.host("site"))
    wait_until(lambda: system.status(cp_id) in ("ON", "SUPPLYING"), BOUND_S, "the CP back at central")
    scenario.mark("served_at")
    system.wait_driver_done(alice, BOUND_S)
    assert [t.reason for t in system.tickets(alice)] == ["completed"], "one ticket, the session's own end"
    scenario.finish(restarted=[])


def test_a_driver_cut_off_mid_session_gets_its_ticket_once_after_the_heal(
    system: System, lan, scenario: Scenario
) -> None:
    network = lan.network
    scenario.name = "partition: the driver's host cut"
    _, alice = start_one_session(system, session_s=5)
    scenario.mark("fault_at")
    network.cut(network.host("car"))
    try:
        wait_until(
            lambda: any(s["state"] == "ended" for s in system.sessions()),
            BOUND_S,
            "the session to end at the CP",
        )
        assert system.tickets(alice) == [], "the ticket cannot reach a driver cut off"
        assert system.drivers[alice].alive
    finally:
        scenario.mark("restart_at")
        network.heal(network.host("car"))
    wait_until(lambda: system.tickets(alice), BOUND_S, "the ticket after the heal")
    scenario.mark("served_at")
    system.wait_driver_done(alice, BOUND_S)
    assert [t.reason for t in system.tickets(alice)] == ["completed"]
    scenario.finish(restarted=[])


def test_central_cut_off_mid_session_loses_nothing_and_catches_up_after_the_heal(
    system: System, lan, scenario: Scenario
) -> None:
    network = lan.network
    scenario.name = "partition: central's host cut"
    cp_id, alice = start_one_session(system, session_s=8)
    scenario.mark("fault_at")
    network.cut(network.host("central"))
    try:
        recorded = readings_recorded(system)
        wait_until(
            lambda: readings_recorded(system) >= recorded + 3, 20, "the engine metering on without central"
        )
        cp = next(iter(system.cps.values()))
        wait_until(
            lambda: all(s["ended"] for s in cp.engine_sessions().values()),
            BOUND_S,
            "the session to end at the CP",
        )
        assert "cannot reach central" in cp.monitor.output() or cp.monitor.alive
    finally:
        scenario.mark("restart_at")
        network.heal(network.host("central"))
    wait_until(lambda: system.status(cp_id) == "ON", BOUND_S, "the CP registered again, ON")
    scenario.mark("served_at")
    system.wait_driver_done(alice, BOUND_S)
    assert [t.reason for t in system.tickets(alice)] == ["completed"], "central billed the session once"
    scenario.finish(restarted=[])


def test_engine_controls_are_refused_from_another_host_and_served_on_loopback(system: System, lan) -> None:
    network = lan.network
    site, car = network.host("site"), network.host("car")
    cp = system.add_cp(system.ident("CP-ctl"), wait=False, host="0.0.0.0")
    wait_until(cp.ready, 30, "the engine on its host")

    def ctl(at: Place, host: str) -> Child:
        argv = ["ctl", "engine", cp.cp_id, "fault", "--host", host, "--port", str(cp.engine_port)]
        return Child(f"ctl from {host}", argv, system.logs / "ctl.log", prefix=at.prefix).start()

    remote = ctl(Place(car.ip, tuple(car.prefix)), site.ip)
    assert remote.wait(20) == 1 and "controls are local only" in remote.output()
    assert engine_status(site.ip, cp.engine_port).health.value == "OK", "nothing happened"
    local = ctl(Place(site.ip, tuple(site.prefix)), "127.0.0.1")
    assert local.wait(20) == 0, local.output()
    assert engine_status(site.ip, cp.engine_port).health.value == "KO"
