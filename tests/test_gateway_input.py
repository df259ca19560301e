"""Bad chargers harm nobody: the gateway's pure cores on every kind of bad input (fast, no network),
then hypothesis throwing a few hundred arbitrary OCPP frames and out-of-schema payloads at a real
gateway process over one WebSocket, which must answer each call with the right CallError and stay up."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from evcharge.gateway import auth, transactions, wire
from evcharge.gateway.health import ChargerHealth
from evcharge.gateway.transactions import Binding, Txn
from evcharge.gateway.wire import CallIn, ResultIn, Unusable, Version
from evcharge.protocol.messages import EndReason, Health, MeterReading, SessionEnded, SessionStarted
from evcharge.protocol.units import cost_micro_eur
from tests.harness import System
from tests.test_gateway import GatewayRun

V16, V201 = Version.V16, Version.V201
BOOT_16 = {"chargePointVendor": "V", "chargePointModel": "M"}
BOOT_201 = {"chargingStation": {"vendorName": "V", "model": "M"}, "reason": "PowerUp"}
STAMP = "2026-11-30T10:00:00Z"


def call(action: str, payload: Any, unique_id: str = "1") -> str:
    return json.dumps([2, unique_id, action, payload])


# ------------------------------------------------------------------ wire


@pytest.mark.parametrize(
    ("version", "text", "code", "reply_id"),
    [
        (V16, "not json", "FormationViolation", "-1"),
        (V201, "not json", "FormatViolation", "-1"),
        (V16, "{}", "ProtocolError", "-1"),
        (V201, "[]", "RpcFrameworkError", "-1"),
        (V201, '[7, "a", "Heartbeat", {}]', "MessageTypeNotSupported", "a"),
        (V16, '[7, "a", "Heartbeat", {}]', "ProtocolError", "a"),
        (V16, '[2, 5, "Heartbeat", {}]', "ProtocolError", "-1"),
        (V16, '[2, "' + "x" * 37 + '", "Heartbeat", {}]', "ProtocolError", "-1"),
        (V16, '[2, "a", "Heartbeat"]', "ProtocolError", "a"),
        (V16, call("MakeCoffee", {}), "NotSupported", "1"),
        (V201, call("StartTransaction", {}), "NotSupported", "1"),  # a 1.6 action, not 2.0.1
        (V16, call("BootNotification", {"chargePointVendor": "V"}), "ProtocolError", "1"),
        (V16, call("BootNotification", {**BOOT_16, "chargePointModel": 5}), "TypeConstraintViolation", "1"),
        (V16, call("BootNotification", {**BOOT_16, "chargePointModel": "M" * 21}),
         "TypeConstraintViolation", "1"),
        (V16, call("BootNotification", {**BOOT_16, "colour": "red"}), "FormationViolation", "1"),
        (V201, call("BootNotification", {**BOOT_201, "colour": "red"}), "FormatViolation", "1"),
        (V201, call("BootNotification", {**BOOT_201, "reason": "Bored"}), "PropertyConstraintViolation", "1"),
        (V16, call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Sleepy"}),
         "PropertyConstraintViolation", "1"),
        (V201, call("BootNotification", {"chargingStation": {"model": "M"}, "reason": "PowerUp"}),
         "OccurenceConstraintViolation", "1"),
    ],
)  # fmt: skip
def test_every_unusable_frame_gets_the_call_error_its_version_spells(
    version: Version, text: str, code: str, reply_id: str
) -> None:
    message = wire.parse(text, version)
    assert isinstance(message, Unusable), message
    assert message.reply is not None
    kind, unique_id, spelled, description, details = json.loads(message.reply)
    assert (kind, unique_id, spelled) == (4, reply_id, code), message
    assert description and details == {}


def test_calls_and_results_parse_and_results_are_never_answered() -> None:
    assert wire.parse(call("BootNotification", BOOT_16), V16) == CallIn("1", "BootNotification", BOOT_16)
    assert wire.parse('[3, "9", {"status": "Accepted"}]', V16) == ResultIn("9", {"status": "Accepted"})
    error = wire.parse('[4, "9", "GenericError", "nope", {}]', V201)
    assert not isinstance(error, Unusable) and error.unique_id == "9"
    broken_result = wire.parse('[3, "9"]', V16)
    assert isinstance(broken_result, Unusable) and broken_result.reply is None


def test_lenient_mode_lets_unknown_fields_through_and_strict_mode_does_not() -> None:
    quirky = call("BootNotification", {**BOOT_16, "vendorSpecificColour": "red"})
    assert isinstance(wire.parse(quirky, V16), Unusable)
    lenient = wire.parse(quirky, V16, lenient=True)
    assert isinstance(lenient, CallIn) and lenient.tolerated
    assert isinstance(
        wire.parse(call("BootNotification", {"chargePointVendor": "V"}), V16, lenient=True), Unusable
    )
    with pytest.raises(transactions.BadValue, match="no time zone"):
        transactions.timestamp("2026-11-30T10:00:00", lenient=False)
    assert transactions.timestamp("2026-11-30T10:00:00", lenient=True) == transactions.timestamp(
        STAMP, lenient=False
    )


@given(st.text(max_size=300) | st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_arbitrary_text_never_raises_and_any_call_is_answered(text: str | bytes) -> None:
    for version in Version:
        message = wire.parse(text, version)
        if isinstance(message, Unusable) and message.reply is not None:
            reply = json.loads(message.reply)
            assert reply[0] == 4 and isinstance(reply[1], str)


# ---------------------------------------------------------- transactions

BINDING = Binding("session-1", "driver-1", 300_000)


def test_a_1_6_transaction_maps_to_started_readings_and_ended_with_the_meter_difference() -> None:
    start = transactions.start_16(
        "CP", 7, {"connectorId": 1, "idTag": "driver-1", "meterStart": 1000, "timestamp": STAMP}, BINDING,
        lenient=False,
    )  # fmt: skip
    assert start.answer == {"transactionId": 7, "idTagInfo": {"status": "Accepted"}}
    [started] = start.events
    assert isinstance(started, SessionStarted) and started.seq == 0 and started.session_id == "session-1"
    txn = start.txn
    assert txn is not None
    values = [{"timestamp": STAMP, "sampledValue": [{"value": "1.5", "unit": "kWh"}]}]
    meter = transactions.meter_values_16(txn, {"connectorId": 1, "transactionId": 7, "meterValue": values})
    [reading] = meter.events
    assert isinstance(reading, MeterReading) and (reading.seq, reading.wh) == (1, 500)
    assert reading.micro_eur == cost_micro_eur(500, 300_000)
    assert meter.txn is not None
    older = [{"timestamp": STAMP, "sampledValue": [{"value": "1200"}]}]
    stale = transactions.meter_values_16(
        meter.txn, {"connectorId": 1, "transactionId": 7, "meterValue": older}
    )
    assert stale.events == [], "an older reading after a newer one: the meter only counts up"
    stop = transactions.stop_16(
        meter.txn, {"transactionId": 7, "meterStop": 2345, "timestamp": STAMP, "reason": "EVDisconnected"},
        lenient=False,
    )  # fmt: skip
    [ended] = stop.events
    assert isinstance(ended, SessionEnded)
    assert (ended.seq, ended.wh, ended.reason) == (2, 1345, EndReason.UNPLUGGED)
    assert ended.micro_eur == cost_micro_eur(1345, 300_000)


def test_a_stop_for_an_unknown_transaction_is_answered_and_set_aside_never_guessed() -> None:
    outcome = transactions.stop_16(
        None, {"transactionId": 99, "meterStop": 5, "timestamp": STAMP}, lenient=False
    )
    assert outcome.events == [] and outcome.txn is None
    assert outcome.dead_letter is not None and "99" in outcome.dead_letter
    refused = transactions.start_16(
        "CP", 8, {"connectorId": 1, "idTag": "x", "meterStart": 0, "timestamp": STAMP}, None, lenient=False
    )
    assert refused.answer["idTagInfo"] == {"status": "Invalid"} and refused.events == []


def test_a_2_0_1_transaction_starts_when_someone_is_known_and_ends_with_its_register() -> None:
    def event(kind: str, seq: int, wh: float, **extra: Any) -> dict[str, Any]:
        return {
            "eventType": kind,
            "timestamp": STAMP,
            "triggerReason": "Authorized",
            "seqNo": seq,
            "transactionInfo": {"transactionId": "tx-1", **extra},
            "meterValue": [{"timestamp": STAMP, "sampledValue": [{"value": wh}]}],
        }

    first = event("Started", 0, 100.0)
    unbound = transactions.transaction_event_201("CP", None, first, None, lenient=False)
    assert unbound.events == [] and unbound.txn is not None and unbound.txn.session_id is None
    assert transactions.needs_binding_201(
        unbound.txn, {**event("Updated", 1, 150.0), "idToken": {"idToken": "d"}}
    )
    bound = transactions.transaction_event_201(
        "CP", unbound.txn, {**event("Updated", 1, 150.0), "idToken": {"idToken": "d", "type": "ISO14443"}},
        BINDING, lenient=False,
    )  # fmt: skip
    assert [type(e) for e in bound.events] == [SessionStarted, MeterReading]
    assert bound.answer == {"idTokenInfo": {"status": "Accepted"}}
    assert bound.txn is not None
    end = transactions.transaction_event_201(
        "CP", bound.txn, event("Ended", 2, 1100.9, stoppedReason="Remote"), None, lenient=False
    )
    reading, ended = end.events  # its last register is a reading, then the end
    assert isinstance(reading, MeterReading) and reading.wh == 1000
    assert isinstance(ended, SessionEnded) and (ended.seq, ended.wh) == (3, 1000)


def test_the_reason_central_asked_for_is_the_reason_the_session_ends() -> None:
    txn = Txn("CP", "1", "s", "d", 300_000, 0, 0.0, last_seq=0, stop_reason=EndReason.OPERATOR)
    outcome = transactions.stop_16(
        txn, {"transactionId": 1, "meterStop": 10, "timestamp": STAMP}, lenient=False
    )
    assert outcome.events[0].reason is EndReason.OPERATOR  # type: ignore[union-attr]


def test_meter_values_in_other_units_or_out_of_range_are_refused_not_guessed() -> None:
    with pytest.raises(transactions.BadValue):
        transactions.sample_16([{"sampledValue": [{"value": "12", "unit": "varh"}]}])
    with pytest.raises(transactions.BadValue):
        transactions.sample_16([{"sampledValue": [{"value": "-1"}]}])
    with pytest.raises(transactions.BadValue):
        transactions.sample_201([{"sampledValue": [{"value": 1, "unitOfMeasure": {"multiplier": 12}}]}])
    assert (
        transactions.sample_201([{"sampledValue": [{"value": 2.5, "unitOfMeasure": {"unit": "kWh"}}]}]).wh
        == 2500
    )


# --------------------------------------------------------- health, auth


def test_faulted_is_ko_and_unavailable_is_ko_unless_the_operator_asked_for_it() -> None:
    health = ChargerHealth()
    assert health.verdict() == (Health.OK, "")
    assert health.report((1, 0), "Faulted", "GroundFailure")
    assert health.verdict() == (Health.KO, "charger reports Faulted on connector 1 (GroundFailure)")
    health.report((1, 0), "Unavailable")
    assert health.verdict() == (Health.KO, "charger reports Unavailable")
    assert health.stop(True) and health.verdict() == (Health.OK, "")


def test_admission_join_token_then_only_the_chargers_own_password() -> None:
    basic = auth.basic_credentials
    assert basic("Basic " + "Q1AtMTpzZWNyZXQ=") == ("CP-1", "secret")
    assert basic("Bearer x") is None and basic("Basic !!!") is None
    assert auth.admit("CP-1", ("CP-1", "join"), None, "join") == auth.Admitted("join")
    pending = auth.Credentials(None, auth.hash_password("new"))
    assert auth.admit("CP-1", ("CP-1", "new"), pending, "join") == auth.Admitted("pending")
    own = auth.Credentials(auth.hash_password("new"))
    assert auth.admit("CP-1", ("CP-1", "new"), own, "join") == auth.Admitted("password")
    refused = auth.admit("CP-1", ("CP-1", "join"), own, "join")
    assert isinstance(refused, auth.Denied) and refused.status == 401
    assert isinstance(auth.admit("../etc", None, None, "join"), auth.Denied)
    # Names of central's operations on every CP are no CP's id: refused at the door, not at central.
    assert auth.admit("stop-all", ("stop-all", "join"), None, "join") == auth.Denied(
        404, "'stop-all' is not a valid charger id"
    )
    assert auth.admit("CP-1", None, None, None) == auth.Admitted("open")


# ------------------------------------------------- a real gateway, hypothesis

ACTIONS_16 = ["BootNotification", "Heartbeat", "StatusNotification", "Authorize", "MeterValues",
              "StopTransaction", "DataTransfer", "RemoteStartTransaction", "Reset"]  # fmt: skip
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
payloads = st.dictionaries(
    st.sampled_from(["connectorId", "status", "errorCode", "idTag", "transactionId", "meterStop",
                     "timestamp", "chargePointVendor", "chargePointModel", "vendorId", "meterValue", "x"])
    | st.text(max_size=10),
    json_values,
    max_size=5,
)  # fmt: skip
ids = st.text(min_size=1, max_size=36, alphabet=st.characters(codec="ascii", categories=["L", "N"]))
calls = st.tuples(ids, st.sampled_from(ACTIONS_16) | st.text(max_size=20), payloads).map(
    lambda t: json.dumps([2, t[0], t[1], t[2]])
)
frames = st.one_of(
    calls,
    calls,
    st.text(max_size=60),
    json_values.map(json.dumps),
    st.tuples(st.sampled_from([3, 4, 5, 6]), ids, json_values).map(lambda t: json.dumps(list(t))),
)


@pytest.fixture(scope="module")
def live_gateway(kafka_broker, tmp_path_factory):
    system = System(tmp_path_factory.mktemp("gateway-input"), kafka_broker.bootstrap)
    system.start_central()
    run = GatewayRun(system, join_token=None)
    run.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            probe = f"{run.url}/{system.ident('probe')}"
            with connect(probe, subprotocols=["ocpp1.6"], open_timeout=1):  # type: ignore[list-item]
                break
        except OSError:
            time.sleep(0.2)
    yield run
    run.process.stop() if run.process else None
    system.stop_all()


def _answer_to(ws: ClientConnection, unique_id: str, timeout_s: float = 10) -> list[Any]:
    """The reply with `unique_id`, skipping the CallErrors of frames that had no usable id."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if reply[1] == unique_id:
            return list(reply)


CODES_16 = {"NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError",
            "FormationViolation", "PropertyConstraintViolation", "OccurenceConstraintViolation",
            "TypeConstraintViolation", "GenericError"}  # fmt: skip


@pytest.mark.kafka
@pytest.mark.processes
@given(batch=st.lists(frames, min_size=25, max_size=40))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_arbitrary_frames_get_the_right_call_error_and_the_connection_stays_up(live_gateway, batch) -> None:
    run: GatewayRun = live_gateway
    cp_id = run.system.ident("OCPP-FUZZ")
    with connect(f"{run.url}/{cp_id}", subprotocols=["ocpp1.6"], open_timeout=5) as ws:  # type: ignore[list-item]
        ws.send(call("BootNotification", BOOT_16, "boot"))
        assert _answer_to(ws, "boot")[0] == 3
        for frame in batch:
            ws.send(frame)
            parsed = _loads(frame)
            if isinstance(parsed, list) and len(parsed) >= 2 and parsed[0] == 2 and _usable_id(parsed[1]):
                reply = _answer_to(ws, parsed[1])
                assert reply[0] in (3, 4), reply
                if reply[0] == 4:
                    assert reply[2] in CODES_16, reply
                if len(parsed) == 4 and isinstance(parsed[3], dict) and not wire.is_action(V16, parsed[2]):
                    assert reply[0] == 4 and reply[2] in ("NotSupported", "NotImplemented"), (frame, reply)
        ws.send(call("Heartbeat", {}, "still-there"))
        assert _answer_to(ws, "still-there")[0] == 3, "the connection is up and served"
    assert run.process is not None and run.process.alive


def _loads(frame: str) -> Any:
    try:
        return json.loads(frame)
    except ValueError:
        return None


def _usable_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 36


@pytest.mark.kafka
@pytest.mark.processes
def test_after_the_fuzzing_the_gateway_is_healthy_and_logged_no_error(live_gateway) -> None:
    run: GatewayRun = live_gateway
    cp_id = run.system.ident("OCPP-AFTER")
    with connect(f"{run.url}/{cp_id}", subprotocols=["ocpp2.0.1"], open_timeout=5) as ws:  # type: ignore[list-item]
        ws.send(call("BootNotification", BOOT_201, "b"))
        assert _answer_to(ws, "b")[2]["status"] == "Accepted"
        deadline = time.monotonic() + 20
        while run.system.status(cp_id) != "ON":
            assert time.monotonic() < deadline, "the new charger shows ON at central"
            time.sleep(0.05)
    metrics = run.metrics()
    assert "evcharge_gateway_call_errors_total" in metrics
    assert run.system.unexpected_log_lines() == {}


async def _dead_letters(bootstrap: str, consumer: str) -> list[Any]:
    """Every dead letter `consumer` wrote, read to the end of the topic."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    from evcharge.protocol.messages import DEAD_LETTERS

    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await reader.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(20):
            from aiokafka import TopicPartition

            from evcharge.protocol.topics import TOPICS
            from evcharge.runtime.kafka import ensure_topics

            counts = await ensure_topics(bootstrap, TOPICS)
            assigned = [
                TopicPartition("evcharge.deadletter", p) for p in range(counts["evcharge.deadletter"])
            ]
            reader.assign(assigned)
            await reader.seek_to_beginning(*assigned)
            ends = await reader.end_offsets(assigned)
            while True:
                positions = {tp: await reader.position(tp) for tp in assigned}
                if all(positions[tp] >= end for tp, end in ends.items()):
                    break
                for batch in (await reader.getmany(timeout_ms=500, max_records=5000)).values():
                    records += batch
    finally:
        await reader.stop()
    letters = [DEAD_LETTERS.decode(r.value or b"") for r in records]
    return [letter for letter in letters if letter.consumer == consumer]


@pytest.mark.kafka
@pytest.mark.processes
def test_every_unusable_frame_is_kept_as_a_dead_letter_with_its_reason(live_gateway) -> None:
    import asyncio

    run: GatewayRun = live_gateway
    cp_id = run.system.ident("OCPP-DLQ")
    with connect(f"{run.url}/{cp_id}", subprotocols=["ocpp1.6"], open_timeout=5) as ws:  # type: ignore[list-item]
        ws.send("{not json")
        ws.send(call("BootNotification", {"chargePointVendor": "V"}, "incomplete"))
        assert _answer_to(ws, "incomplete")[2] == "ProtocolError"
        ws.send(
            call("StopTransaction", {"transactionId": 424242, "meterStop": 1, "timestamp": STAMP}, "stop")
        )
        assert _answer_to(ws, "stop")[0] == 3, "a stop for an unknown transaction is still answered"
    consumer = f"gateway-gateway-{run.system.tag}"
    deadline = time.monotonic() + 20
    while True:
        letters = [x for x in asyncio.run(_dead_letters(run.system.kafka, consumer)) if x.key == cp_id]
        reasons = " | ".join(letter.reason for letter in letters)
        if len(letters) >= 3 or time.monotonic() > deadline:
            break
    assert "not JSON" in reasons
    assert "chargePointModel" in reasons
    assert "transaction 424242, which this gateway never gave" in reasons
    assert any(letter.payload.startswith(b"{not json") for letter in letters), "the original bytes are kept"
    assert "never gave: recorded as a dead letter" in (run.process.output() if run.process else "")
