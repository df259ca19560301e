"""The OCPP gateway with real processes: central and the gateway as `evcharge` subcommands on the
real broker, and chargers made of the `ocpp` library's own ChargePoint classes over real WebSockets.

Each session is judged from three sources: the ticket central sent, central's record, and what
the simulated charger itself metered (an OCPP charger has no engine record to read).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import shutil
import sqlite3
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from evcharge.devtools.commands import child
from evcharge.devtools.supervisor import Child
from evcharge.devtools.system import open_url
from evcharge.gateway.settings import GatewaySettings
from evcharge.gateway.sim import MeterTrace, SimCharger
from evcharge.protocol import signing
from evcharge.protocol.messages import MeterReading, StopRequest, encode
from evcharge.protocol.topics import Topic, route
from evcharge.protocol.units import cost_micro_eur
from evcharge.runtime.kafka import new_producer
from evcharge.runtime.ports import free_ports
from tests.harness import Credentials, System

pytestmark = [pytest.mark.kafka, pytest.mark.processes]

JOIN = "gateway-join-token-for-tests"
PRICE = 300_000  # the gateway's default, 0.30 EUR/kWh


async def until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll `predicate` (run in a thread: it may do blocking I/O) without stalling the chargers."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = await asyncio.to_thread(predicate)
        except Exception as exc:  # what is polled may not be up yet
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval_s)


@dataclass
class GatewayRun:
    """Central and one gateway process of a `System`, and the chargers of a test."""

    system: System
    join_token: str | None = JOIN
    overrides: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] | None = None
    process: Child | None = None
    chargers: list[SimCharger] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port, self.metrics_port = free_ports(2)
        self.url = f"ws://127.0.0.1:{self.port}/ocpp"

    def settings(self) -> GatewaySettings:
        s = self.system
        values: dict[str, Any] = {
            "port": self.port,
            "metrics_port": self.metrics_port,
            "kafka": s.kafka,
            "central": (("127.0.0.1", s.tcp_port),),
            "central_url": s.url,
            "state_dir": s.state_dir,
            "join_token": self.join_token,
            "gateway_id": f"gateway-{s.tag}",
            **self.overrides,
        }
        return GatewaySettings(**values)

    def start(self, env: dict[str, str] | None = None) -> Child:
        if self.process is not None:
            self.process.stop()
        self.process = child(
            "gateway", self.settings(), self.system.logs / "gateway.log", env=env or self.env
        ).start()
        return self.process

    async def ready(self, timeout_s: float = 30) -> None:
        await until(lambda: _answers(self.metrics_port), timeout_s, "the gateway's metrics endpoint")

    def charger(self, name: str, version: str = "1.6", **options: Any) -> SimCharger:
        password = options.pop("password", self.join_token)
        charger = SimCharger(self.system.ident(name), self.url, version=version, password=password, **options)
        self.chargers.append(charger)
        return charger

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    @property
    def store_path(self) -> Path:
        return self.system.state_dir / f"gateway-{self.system.tag}.sqlite"

    def store(self) -> sqlite3.Connection:
        db = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=5)
        db.row_factory = sqlite3.Row
        return db

    def outbox(self) -> int:
        with contextlib.closing(self.store()) as db:
            return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def _answers(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
        return response.status == 200


@contextlib.asynccontextmanager
async def running(*chargers: SimCharger) -> AsyncIterator[asyncio.Event]:
    """The chargers run (reconnecting by themselves) until the block ends."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in chargers]
    try:
        yield stop
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def gateway(system) -> GatewayRun:
    system.central_overrides = {"require_auth": True, "join_token": JOIN, "operator_token": "op-token"}
    system.start_central()
    run = GatewayRun(system)
    run.start()
    yield run
    if run.process is not None:
        run.process.stop()


# ------------------------------------------------------------------ audit


def central_session(system: System, session_id: str) -> dict[str, Any]:
    return system.get(f"/sessions/{session_id}")


async def ended_sessions(
    system: System, cp_id: str, count: int, timeout_s: float = 30
) -> list[dict[str, Any]]:
    def ended() -> list[dict[str, Any]] | None:
        sessions = [s for s in system.get(f"/sessions?cp_id={cp_id}&limit=100")["sessions"]]
        done = [s for s in sessions if s["state"] == "ended"]
        return done if len(done) >= count and len(done) == len(sessions) else None

    found: list[dict[str, Any]] = await until(ended, timeout_s, f"{count} ended sessions at {cp_id}")
    return found


def assert_billed_as_metered(session: dict[str, Any], trace: MeterTrace, price: int = PRICE) -> None:
    """Central's record = the charger's own meter (stop - start), to the Wh and the micro-euro."""
    assert trace.wh is not None, "the charger never stopped this transaction"
    assert (session["wh"], session["micro_eur"]) == (trace.wh, cost_micro_eur(trace.wh, price)), (
        session,
        trace,
    )


def tickets_from_kafka_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "ticket"]


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_driver_charges_at_an_ocpp_charger_with_live_readings_and_an_exact_ticket(
    gateway: GatewayRun, version: str
) -> None:
    system = gateway.system
    await gateway.ready()
    charger = gateway.charger("OCPP-001", version, meter_interval_s=0.5)
    driver = system.ident("drv")
    async with running(charger):
        await until(lambda: system.status(charger.cp_id) == "ON", 20, "the charger ON at central")
        system.start_driver(driver, [charger.cp_id], interval_s=0.2)
        await until(lambda: system.status(charger.cp_id) == "SUPPLYING", 20, "SUPPLYING")
        await until(lambda: len(charger.traces) == 1 and len(charger.traces[0].readings) >= 4, 20, "readings")
        progress = await until(
            lambda: [e for e in system.events(driver) if e["event"] == "progress" and e["wh"] > 0],
            20,
            "live readings on the driver's screen",
        )
        assert progress[-1]["micro_eur"] == cost_micro_eur(progress[-1]["wh"], PRICE)
        session_id = progress[0]["session_id"]
        status, _ = system.post(f"/cp/{charger.cp_id}/stop", token="op-token")
        assert status == 200
        await until(lambda: charger.settled(), 20, "the charger to stop and be answered")
        [session] = await ended_sessions(system, charger.cp_id, 1)
        await until(lambda: tickets_from_kafka_events(system.events(driver)), 20, "the driver's ticket")
        await until(lambda: system.status(charger.cp_id) == "STOPPED", 20, "STOPPED")
        assert not charger.available, "the charger was made Inoperative"
        system.post(f"/cp/{charger.cp_id}/resume", token="op-token")
        await until(lambda: charger.available, 20, "the charger Operative again")
        await until(lambda: system.status(charger.cp_id) == "ON", 20, "ON again")
    [trace] = charger.traces
    assert session["session_id"] == session_id and session["end_reason"] == "operator"
    assert_billed_as_metered(session, trace)
    [ticket] = tickets_from_kafka_events(system.events(driver))
    assert (ticket["wh"], ticket["micro_eur"]) == (session["wh"], session["micro_eur"])
    assert trace.wh and trace.wh > 0
    system.assert_invariants()
    assert system.unexpected_log_lines() == {}


async def handshake(url: str, *, password: str | None, cp_id: str, subprotocol: str | None = "ocpp1.6",
                    ssl_context: ssl.SSLContext | None = None) -> tuple[int, str]:  # fmt: skip
    """(HTTP status, body) of a handshake: 101 when the gateway let the charger in."""
    headers = {}
    if password is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{cp_id}:{password}".encode()).decode()
    try:
        async with connect(
            url,
            subprotocols=[subprotocol] if subprotocol else None,  # type: ignore[list-item]
            additional_headers=headers,
            open_timeout=5,
            ssl=ssl_context,
        ):
            return 101, ""
    except InvalidStatus as exc:
        return exc.response.status_code, (exc.response.body or b"").decode()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_new_charger_joins_with_the_token_gets_a_password_of_its_own_and_only_that_opens_it(
    gateway: GatewayRun, version: str
) -> None:
    system = gateway.system
    await gateway.ready()
    charger = gateway.charger("OCPP-JOIN", version)
    async with running(charger):
        await until(lambda: system.status(charger.cp_id) == "ON", 20, "the new charger ON at central")
        await until(
            lambda: charger.password != JOIN and charger.counters.connects >= 2, 20, "its new password"
        )
        await until(lambda: charger.connected.is_set(), 20, "back with its own password")
        with contextlib.closing(gateway.store()) as db:
            row = db.execute(
                "SELECT password_hash, pending_hash FROM chargers WHERE cp_id = ?", (charger.cp_id,)
            ).fetchone()
            dump = "\n".join(db.iterdump())
        assert tuple(row) == (hashlib.sha256(charger.password.encode()).hexdigest(), None)
        assert charger.password not in dump and JOIN not in dump, "only a hash is kept"
        url = f"{gateway.url}/{charger.cp_id}"
        status, body = await handshake(url, password=JOIN, cp_id=charger.cp_id)
        assert status == 401 and "has a password of its own" in body, "the join token no longer opens it"
        assert await handshake(url, password=None, cp_id=charger.cp_id) == (
            401,
            f"charger {charger.cp_id} must authenticate with HTTP Basic (OCPP security profile 1)\n",
        )
        assert system.status(charger.cp_id) == "ON", "the live charger is untouched"
        stranger = system.ident("OCPP-666")
        status, body = await handshake(f"{gateway.url}/{stranger}", password="a-guess", cp_id=stranger)
        assert status == 401 and "unknown here" in body
        status, body = await handshake(f"{gateway.url}/{stranger}", password=JOIN, cp_id="someone-else")
        assert status == 401 and "is not the charger id" in body
        assert (await handshake(gateway.url[: -len("/ocpp")] + "/elsewhere", password=JOIN, cp_id="x"))[
            0
        ] == 404
        status, _ = await handshake(url, password=charger.password, cp_id=charger.cp_id, subprotocol="ocpp9")
        assert status == 400
        assert system.status(stranger) is None, "never registered at central"
        log = gateway.process.output() if gateway.process else ""
        assert f"refused a connection as {stranger}" in log
    assert system.unexpected_log_lines() == {}


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_an_rfid_card_at_the_charger_is_authorised_by_central_and_billed_like_any_other(
    gateway: GatewayRun, version: str
) -> None:
    system = gateway.system
    await gateway.ready()
    charger = gateway.charger("OCPP-RFID", version, meter_interval_s=0.4)
    card, other = system.ident("card"), system.ident("card2")
    async with running(charger):
        await until(lambda: system.status(charger.cp_id) == "ON", 20, "ON")
        assert await charger.swipe(card) == "Accepted"
        await until(lambda: system.status(charger.cp_id) == "SUPPLYING", 20, "SUPPLYING")
        await until(lambda: len(charger.traces[0].readings) >= 3, 20, "a few readings")
        assert await charger.swipe(other) == "Blocked", "central says the CP is busy"
        charger.end("Local")
        await until(lambda: charger.settled(), 20, "the stop answered")
        [session] = await ended_sessions(system, charger.cp_id, 1)
        await until(lambda: system.status(charger.cp_id) == "ON", 20, "ON again")
    [trace] = charger.traces
    assert session["driver_id"] == card and session["end_reason"] == "driver"
    assert_billed_as_metered(session, trace)
    assert "refused session" not in (gateway.process.output() if gateway.process else "")
    assert system.unexpected_log_lines() == {}


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_faulted_charger_is_broken_and_a_lost_or_silent_one_disconnected(
    gateway: GatewayRun, version: str
) -> None:
    system = gateway.system
    await gateway.ready()
    charger = gateway.charger("OCPP-FAULT", version)
    async with running(charger):
        await until(lambda: system.status(charger.cp_id) == "ON", 20, "ON")
        await charger.send_status("Faulted", "GroundFailure")
        await until(lambda: system.status(charger.cp_id) == "BROKEN", 5, "BROKEN")
        detail = system.get(f"/cp/{charger.cp_id}")["detail"]
        assert detail.startswith("charger reports Faulted"), detail
        await charger.send_status("Available")
        await until(lambda: system.status(charger.cp_id) == "ON", 5, "ON once it is Available")
        charger.go_offline()
        await until(lambda: system.status(charger.cp_id) == "DISCONNECTED", 3, "DISCONNECTED at once")
        charger.go_online()
        await until(lambda: system.status(charger.cp_id) == "ON", 20, "ON when it is back")
    await until(lambda: system.status(charger.cp_id) == "DISCONNECTED", 3, "DISCONNECTED when it leaves")
    # A charger that hangs keeps its socket open and answers no ping: dropped within seconds.
    hung = SimCharger(charger.cp_id, gateway.url, version=version, password=charger.password)
    async with running(hung):
        await until(lambda: system.status(charger.cp_id) == "ON", 20, "ON")
        assert hung._ws is not None
        hung._ws.transport.pause_reading()
        frozen = time.monotonic()
        await until(lambda: system.status(charger.cp_id) == "DISCONNECTED", 10, "DISCONNECTED when hung")
        # Ping interval + ping timeout + closing handshake, and a margin for the polling.
        assert time.monotonic() - frozen < 1.0 + 1.5 + 0.5 + 0.5
    assert system.unexpected_log_lines() == {}


async def test_metrics_count_chargers_messages_latency_and_errors(gateway: GatewayRun) -> None:
    await gateway.ready()
    old, new = gateway.charger("OCPP-M16", "1.6"), gateway.charger("OCPP-M201", "2.0.1")
    async with running(old, new):
        await until(lambda: old.connected.is_set() and new.connected.is_set(), 20, "both connected")
        await until(lambda: old.counters.connects >= 2 and new.counters.connects >= 2, 20, "own passwords")
        await until(lambda: old.connected.is_set() and new.connected.is_set(), 20, "both back")
        assert old._ws is not None
        await old._ws.send("this is not OCPP")

        def errored() -> str | None:
            text = gateway.metrics()
            return text if 'code="FormationViolation"' in text else None

        text = await until(errored, 10, "the error counted")
    assert 'evcharge_gateway_chargers_connected{version="1.6"} 1.0' in text
    assert 'evcharge_gateway_chargers_connected{version="2.0.1"} 1.0' in text
    assert 'evcharge_gateway_ocpp_messages_total{action="BootNotification",version="1.6"} 1.0' in text
    assert 'evcharge_gateway_ocpp_messages_total{action="BootNotification",version="2.0.1"} 1.0' in text
    assert 'evcharge_gateway_call_seconds_count{action="BootNotification"} 2.0' in text
    assert 'evcharge_gateway_call_errors_total{code="FormationViolation"} 1.0' in text


def make_certificate(where: Path) -> tuple[Path, Path]:
    cert, key = where / "gateway.crt", where / "gateway.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_security_profile_2_tls_with_basic_auth(system, tmp_path: Path) -> None:
    system.start_central()
    cert, key = make_certificate(tmp_path)
    run = GatewayRun(system, overrides={"cert": cert, "key": key})
    run.url = f"wss://127.0.0.1:{run.port}/ocpp"
    run.start()
    try:
        await run.ready()
        trusted = ssl.create_default_context(cafile=str(cert))
        charger = run.charger("OCPP-TLS", "2.0.1")
        status, _ = await handshake(f"{run.url}/{charger.cp_id}", password=JOIN, cp_id=charger.cp_id,
                                    subprotocol="ocpp2.0.1", ssl_context=trusted)  # fmt: skip
        assert status == 101
        status, _ = await handshake(f"{run.url}/{charger.cp_id}", password="nope", cp_id=charger.cp_id,
                                       subprotocol="ocpp2.0.1", ssl_context=trusted)  # fmt: skip
        assert status == 401
        with pytest.raises(ssl.SSLError):
            await handshake(f"{run.url}/{charger.cp_id}", password=JOIN, cp_id=charger.cp_id,
                            ssl_context=ssl.create_default_context())  # fmt: skip
        assert "ws://" not in run.process.output() if run.process else False
        assert "wss://127.0.0.1" in (run.process.output() if run.process else "")
    finally:
        if run.process is not None:
            run.process.stop()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_drivers_stop_is_a_remote_stop_and_a_rejected_remote_start_a_refused_session(
    gateway: GatewayRun, version: str
) -> None:
    system = gateway.system
    await gateway.ready()
    charger = gateway.charger("OCPP-RSTOP", version, meter_interval_s=0.3)
    driver = system.ident("drv")
    async with running(charger):
        await until(lambda: system.status(charger.cp_id) == "ON", 20, "ON")
        status, body = system.post("/request/charge", {"driver_id": driver, "cp_id": charger.cp_id})
        assert status == 201
        session_id = body["session_id"]
        await until(lambda: system.status(charger.cp_id) == "SUPPLYING", 20, "SUPPLYING")
        await until(lambda: len(charger.traces[0].readings) >= 2, 20, "readings")
        producer = new_producer(system.kafka)
        await producer.start()
        try:
            stop = StopRequest(driver_id=driver, session_id=session_id)
            topic, key = route(stop)
            await producer.send_and_wait(topic, encode(stop), key=key.encode())
        finally:
            await producer.stop()
        await until(lambda: charger.settled(), 20, "the remote stop carried out and answered")
        [session] = await ended_sessions(system, charger.cp_id, 1)
        assert session["end_reason"] == "driver"
        assert_billed_as_metered(session, charger.traces[0])

        charger.available = False  # it will reject a remote start, without saying so first
        status, body = system.post("/request/charge", {"driver_id": driver, "cp_id": charger.cp_id})
        assert status == 201
        refused = await until(
            lambda: (s := central_session(system, body["session_id"]))["state"] == "ended" and s,
            20,
            "refused",
        )
        assert refused["end_reason"] == "not_started" and refused["wh"] == 0
        assert len(charger.traces) == 1, "nothing started at the charger"
    assert system.unexpected_log_lines() == {}


async def test_lenient_mode_is_a_setting_for_known_vendor_quirks(system) -> None:
    system.start_central()
    boot = json.dumps(
        [2, "b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M", "x": 1}]
    )
    for lenient in (False, True):
        run = GatewayRun(
            system, join_token=None, overrides={"lenient": lenient, "gateway_id": f"gw-{lenient}"}
        )
        run.start()
        try:
            await run.ready()
            cp_id = system.ident(f"OCPP-Q{int(lenient)}")
            status, _ = await handshake(f"{run.url}/{cp_id}", password=None, cp_id=cp_id, subprotocol=None)
            assert status == (101 if lenient else 400), "no subprotocol offered: taken as 1.6 only if lenient"
            async with connect(f"{run.url}/{cp_id}", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
                await ws.send(boot)
                reply = json.loads(await ws.recv())
            assert reply[0] == (3 if lenient else 4), reply
            if not lenient:
                assert reply[2] == "FormationViolation"
        finally:
            if run.process is not None:
                run.process.stop()


async def test_a_reconnect_with_the_same_charger_id_replaces_the_old_socket(gateway: GatewayRun) -> None:
    system = gateway.system
    await gateway.ready()
    charger = gateway.charger("OCPP-TWICE", "1.6")
    async with running(charger):
        await until(lambda: charger.password != JOIN and charger.connected.is_set(), 20, "joined")
        await until(lambda: system.status(charger.cp_id) == "ON", 20, "ON")
        token = base64.b64encode(f"{charger.cp_id}:{charger.password}".encode()).decode()
        # A second socket for the same charger (the charger came back before the old one died):
        async with connect(
            f"{gateway.url}/{charger.cp_id}",
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            additional_headers={"Authorization": f"Basic {token}"},
        ) as newer:
            await until(lambda: charger.counters.connects >= 3, 10, "the old socket closed, the sim back")
            await newer.wait_closed()  # ... and the sim's reconnect in turn replaced this one
            assert newer.close_code == 4000 and "replaced" in (newer.close_reason or "")
        await until(lambda: charger.connected.is_set(), 10, "connected")
        assert system.status(charger.cp_id) == "ON"
    log = gateway.process.output() if gateway.process else ""
    assert "reconnected: the new connection replaces the old one" in log
    assert system.unexpected_log_lines() == {}


# ------------------------------------------------------------- security


def http_post(system: System, path: str, body: bytes, signature: bytes) -> tuple[int, Any]:
    """A POST to central with a CP's signature header, as a gateway asks for a card."""
    headers = {"Content-Type": "application/json", signing.SIGNATURE_HEADER: signature.decode()}
    request = urllib.request.Request(system.url + path, data=body, method="POST", headers=headers)
    try:
        with open_url(request, 5, system.http_tls) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def secured_gateway(system: System) -> GatewayRun:
    """Central with proofs required (signed CP events, enrolled drivers) behind TLS on its monitor
    port and HTTP API, and a gateway that trusts its CA: `certs init` made the certificates."""
    tls = system.root / "tls"
    made = Child(
        "certs", ["certs", "init", "--dir", str(tls), "--host", "127.0.0.1"], system.logs / "certs.log"
    ).start()
    assert made.wait(30) == 0, made.output()
    system.secure(Credentials(JOIN, "op-token", tls_dir=tls))
    system.start_central()
    run = GatewayRun(system, overrides={"ca": tls / "ca.pem"})
    run.start()
    yield run
    if run.process is not None:
        run.process.stop()


async def test_with_proofs_required_a_chargers_signed_events_bill_exactly_and_a_forged_one_is_refused(
    secured_gateway: GatewayRun,
) -> None:
    gateway = secured_gateway
    system = gateway.system
    assert system.url.startswith("https://")
    await gateway.ready()
    charger = gateway.charger("OCPP-SIG", "2.0.1", meter_interval_s=0.4)
    driver = system.ident("drv")  # enrolled by the system: its requests carry its proof
    async with running(charger):
        await until(lambda: system.status(charger.cp_id) == "ON", 20, "the charger ON at central over TLS")
        system.start_driver(driver, [charger.cp_id], interval_s=0.2)
        await until(lambda: charger.traces and len(charger.traces[0].readings) >= 3, 20, "readings")
        status, _ = system.post(f"/cp/{charger.cp_id}/stop", token="op-token")
        assert status == 200
        await until(lambda: charger.settled(), 20, "the charger to stop and be answered")
        [session] = await ended_sessions(system, charger.cp_id, 1)
        await until(lambda: tickets_from_kafka_events(system.events(driver)), 20, "the driver's ticket")
        system.post(f"/cp/{charger.cp_id}/resume", token="op-token")
        await until(lambda: charger.available, 20, "the charger Operative again")
        await until(lambda: system.status(charger.cp_id) == "ON", 20, "ON again")
        # A card at the charger has no driver's token: the gateway asks central over HTTPS,
        # vouching for it with the charger's key.
        card = system.ident("card")
        assert await charger.swipe(card) == "Accepted"
        await until(lambda: len(charger.traces) == 2 and len(charger.traces[1].readings) >= 2, 20, "readings")
        charger.end("Local")
        await until(lambda: charger.settled(), 20, "the card's stop answered")
        sessions = await ended_sessions(system, charger.cp_id, 2)
    [trace, card_trace] = charger.traces
    assert trace.wh and trace.wh > 0
    assert_billed_as_metered(session, trace)
    [ticket] = tickets_from_kafka_events(system.events(driver))
    assert (ticket["wh"], ticket["micro_eur"]) == (session["wh"], session["micro_eur"])
    [card_session] = [s for s in sessions if s["driver_id"] == card]
    assert_billed_as_metered(card_session, card_trace)
    assert gateway.outbox() == 0, "every event went out, signed"
    with contextlib.closing(gateway.store()) as db:
        [(key,)] = db.execute("SELECT engine_key FROM chargers WHERE cp_id = ?", (charger.cp_id,)).fetchall()
    assert key, "the charger's key is kept in the gateway's store"
    store_files = list(gateway.store_path.parent.glob(gateway.store_path.name + "*"))
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in store_files} == {
        p.name: 0o600 for p in store_files
    }, "readable by the gateway's user alone"
    assert system.unexpected_log_lines() == {}

    # Anyone on the broker, claiming the charger's session: unsigned, then with a key of its own.
    forged = MeterReading(
        cp_id=charger.cp_id, session_id=session["session_id"], seq=10_000, power_w=7_400,
        wh=1_000_000_000, micro_eur=300_000_000_000,
    )  # fmt: skip
    payload = encode(forged)
    producer = new_producer(system.kafka)
    await producer.start()
    try:
        async with asyncio.timeout(20):
            await producer.send_and_wait(Topic.CP_EVENTS, payload, key=charger.cp_id.encode())
            header = [(signing.SIGNATURE_HEADER, signing.sign(signing.new_key(), payload))]
            await producer.send_and_wait(Topic.CP_EVENTS, payload, key=charger.cp_id.encode(), headers=header)
    finally:
        await producer.stop()

    def refusals() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in (system.state_dir / "audit.log").read_text().splitlines()]
        return [a for a in lines if a["action"] == "cp_event" and a["result"].startswith("refused: forged")]

    await until(lambda: len(refusals()) == 2, 20, "both forgeries refused and audited")
    assert {a["who"] for a in refusals()} == {charger.cp_id}
    [again] = [s for s in system.sessions() if s["session_id"] == session["session_id"]]
    assert (again["wh"], again["micro_eur"]) == (session["wh"], session["micro_eur"])

    # Anyone on the network asking central for a charge at that charger, as if its gateway
    # vouched for a card: without the charger's key, refused and audited.
    body = json.dumps({"driver_id": system.ident("card"), "cp_id": charger.cp_id}).encode()
    status, answer = http_post(system, "/request/charge", body, signing.sign(signing.new_key(), body))
    assert (status, answer["error"]) == (401, "unauthorized")
    lines = [json.loads(line) for line in (system.state_dir / "audit.log").read_text().splitlines()]
    assert any(
        a["action"] == "/request/charge"
        and a["result"] == f"refused: a signature not by {charger.cp_id}'s key"
        for a in lines
    ), "the refusal has its audit line"
