"""Unit tests for evcharge.protocol.messages: encoding, decoding and validation of every message."""

from __future__ import annotations

import json
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evcharge.errors import ProtocolError
from evcharge.protocol.messages import (
    CENTRAL_CLAIMS,
    SCHEMA_VERSION,
    Ack,
    CentralClaim,
    ChargeRequest,
    ChargingProgress,
    Codec,
    ControlResult,
    CpCommand,
    CpEvent,
    DeadLetter,
    DenyCode,
    DriverRequest,
    DriverUpdate,
    EndReason,
    EngineAction,
    EngineControl,
    ErrorReply,
    Health,
    HealthCheck,
    HealthStatus,
    Heartbeat,
    MeterReading,
    Register,
    Registered,
    RequestAccepted,
    RequestDenied,
    ResumeCp,
    SessionEnded,
    SessionRefused,
    SessionStarted,
    StartSupply,
    StopCp,
    StopRequest,
    StopSupply,
    TcpFrame,
    Ticket,
    encode,
    new_id,
)


def decode(data: bytes, kind: object) -> Any:
    return Codec(kind).decode(data)


SID = "5f0c1b7e2a9d4c3b8e6f1a2b3c4d5e6f"

SAMPLES: dict[object, list[msgspec.Struct]] = {
    DriverRequest: [
        ChargeRequest(driver_id="alice", cp_id="CP-1", request_id="r-1"),
        StopRequest(driver_id="alice", session_id=SID),
    ],
    DriverUpdate: [
        RequestAccepted(driver_id="alice", request_id="r-1", session_id=SID, cp_id="CP-1", price=350_000),
        RequestDenied(
            driver_id="alice",
            request_id="r-1",
            cp_id="no such cp!",
            code=DenyCode.UNKNOWN_CP,
            reason="no such cp! is not a known charging point",
        ),
        ChargingProgress(
            driver_id="alice", session_id=SID, cp_id="CP-1", seq=3, power_w=11_000, wh=9, micro_eur=3_150
        ),
        Ticket(
            driver_id="alice",
            session_id=SID,
            request_id="r-1",
            cp_id="CP-1",
            started_at=1_700_000_000.0,
            ended_at=1_700_000_060.5,
            wh=183,
            micro_eur=64_050,
            price=350_000,
            end_reason=EndReason.DRIVER,
            revision=2,
            provisional=False,
            replaces="ticket-1",
        ),
    ],
    CpCommand: [
        StartSupply(
            cp_id="CP-1",
            session_id=SID,
            driver_id="alice",
            price=350_000,
            engine="engine-1",
        ),
        StopSupply(cp_id="CP-1", session_id=SID, reason=EndReason.OPERATOR),
        StopCp(cp_id="CP-1"),
        ResumeCp(cp_id="CP-1"),
    ],
    CpEvent: [
        SessionStarted(
            cp_id="CP-1",
            session_id=SID,
            driver_id="alice",
            seq=0,
            started_at=1_700_000_000.0,
            price=350_000,
        ),
        MeterReading(cp_id="CP-1", session_id=SID, seq=1, power_w=11_000, wh=3, micro_eur=1_050),
        SessionEnded(
            cp_id="CP-1",
            session_id=SID,
            seq=2,
            wh=3,
            micro_eur=1_050,
            ended_at=1_700_000_002.0,
            reason=EndReason.COMPLETED,
        ),
        SessionRefused(cp_id="CP-1", session_id=SID, reason="engine fault"),
    ],
    TcpFrame: [
        Register(
            corr=1,
            cp_id="CP-1",
            location="Plaza Mayor 1",
            price=350_000,
            max_w=22_000,
            health=Health.OK,
            instance="m-1",
            pid=4242,
        ),
        Registered(corr=1, cp_id="CP-1"),
        Heartbeat(corr=2, cp_id="CP-1", health=Health.KO, detail="fault"),
        Ack(corr=2),
        ErrorReply(corr=3, code="duplicate", reason="CP-1 already has a live monitor"),
        HealthCheck(corr=4),
        HealthStatus(corr=4, cp_id="CP-1", health=Health.OK, supplying=True, session_id=SID, pid=7),
        HealthStatus(corr=5, cp_id="CP-1", health=Health.OK, supplying=False),
        EngineControl(corr=6, action=EngineAction.PLUG),
        ControlResult(corr=6, ok=True, detail="plugged in"),
    ],
}

CASES = [(kind, msg) for kind, msgs in SAMPLES.items() for msg in msgs]
UNION_NAMES = {
    DriverRequest: "DriverRequest",
    DriverUpdate: "DriverUpdate",
    CpCommand: "CpCommand",
    CpEvent: "CpEvent",
    TcpFrame: "TcpFrame",
}
CASE_IDS = [f"{UNION_NAMES[kind]}-{type(msg).__name__}" for kind, msg in CASES]


def test_samples_cover_every_member_of_every_union() -> None:
    for kind, msgs in SAMPLES.items():
        assert set(typing.get_args(kind)) == {type(m) for m in msgs}, UNION_NAMES[kind]


@pytest.mark.parametrize(("kind", "message"), CASES, ids=CASE_IDS)
def test_round_trip(kind: object, message: msgspec.Struct) -> None:
    data = encode(message)
    assert isinstance(data, bytes)
    decoded = decode(data, kind)
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize(("kind", "message"), CASES, ids=CASE_IDS)
def test_encoding_carries_the_type_tag(kind: object, message: msgspec.Struct) -> None:
    obj = json.loads(encode(message))
    assert obj["type"] == type(message).__struct_config__.tag


@pytest.mark.parametrize(("kind", "message"), CASES, ids=CASE_IDS)
def test_decoding_as_another_union_is_refused(kind: object, message: msgspec.Struct) -> None:
    for other in SAMPLES:
        if other is not kind:
            with pytest.raises(ProtocolError):
                decode(encode(message), other)


def test_kafka_messages_carry_schema_version_id_and_timestamp() -> None:
    obj = json.loads(encode(StopCp(cp_id="CP-1")))
    assert obj["v"] == SCHEMA_VERSION == 2
    assert isinstance(obj["id"], str) and len(obj["id"]) == 32
    assert isinstance(obj["ts"], float)


def test_a_central_claim_round_trips_and_is_no_other_topics_message() -> None:
    claim = CentralClaim(
        instance="c-1", store_id="ab" * 16, store="postgresql://evcharge@db/evcharge", role="leader",
        http="http://10.0.0.1:8000", tcp="10.0.0.1:7000", pid=42, host="c1",
    )  # fmt: skip
    assert CENTRAL_CLAIMS.decode(encode(claim)) == claim
    with pytest.raises(ProtocolError):
        CENTRAL_CLAIMS.decode(encode(StopCp(cp_id="CP-1")))


def test_dead_letter_round_trip_keeps_the_raw_bytes() -> None:
    letter = DeadLetter(
        source_topic="evcharge.cp.events",
        partition=2,
        offset=41,
        consumer="central",
        reason="bad json",
        key=None,
        payload=b"\x00\xff not json",
    )
    assert decode(encode(letter), DeadLetter) == letter


def test_optional_fields_have_their_defaults_when_omitted() -> None:
    frame = decode(b'{"type":"health_status","cp_id":"CP-1","health":"OK","supplying":false}', TcpFrame)
    assert isinstance(frame, HealthStatus)
    assert frame.session_id is None
    assert frame.corr == 0


def test_a_minimal_kafka_message_gets_defaults() -> None:
    msg = decode(b'{"type":"stop_cp","cp_id":"CP-1"}', CpCommand)
    assert isinstance(msg, StopCp)
    assert msg.v == SCHEMA_VERSION
    assert len(msg.id) == 32


# ----------------------------------------------------------- rejections ----


def as_obj(message: msgspec.Struct) -> dict[str, Any]:
    return msgspec.json.decode(encode(message))


def with_changes(message: msgspec.Struct, **changes: Any) -> bytes:
    obj = as_obj(message)
    obj.update(changes)
    return msgspec.json.encode(obj)


def without(message: msgspec.Struct, field: str) -> bytes:
    obj = as_obj(message)
    del obj[field]
    return msgspec.json.encode(obj)


READING = SAMPLES[CpEvent][1]
START = SAMPLES[CpCommand][0]
REGISTER = SAMPLES[TcpFrame][0]


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"{", b"[1, 2", b"\xff\xfe\x00", b"null", b"42", b'"meter"', b"[]"],
    ids=["empty", "text", "open-brace", "open-list", "binary", "null", "number", "string", "list"],
)
def test_not_a_json_object_is_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data, CpEvent)


@pytest.mark.parametrize(
    "type_",
    ["launch_missiles", "", "METER", "start_supply", None, 3],
    ids=["unknown", "empty", "wrong-case", "other-union", "null", "number"],
)
def test_unknown_type_is_refused(type_: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(with_changes(READING, type=type_), CpEvent)


def test_missing_type_is_refused() -> None:
    with pytest.raises(ProtocolError):
        decode(without(READING, "type"), CpEvent)


@pytest.mark.parametrize("field", ["cp_id", "session_id", "seq", "power_w", "wh", "micro_eur"])
def test_missing_required_field_is_refused(field: str) -> None:
    with pytest.raises(ProtocolError, match=field):
        decode(without(READING, field), CpEvent)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", "1"),
        ("seq", 1.5),
        ("seq", True),
        ("wh", "1"),
        ("wh", None),
        ("wh", 1.5),
        ("micro_eur", 0.5),
        ("cp_id", 7),
        ("session_id", ["x"]),
        ("v", "1"),
        ("v", 1.0),
        ("ts", "now"),
        ("id", 5),
    ],
)
def test_wrong_type_is_refused(field: str, value: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(with_changes(READING, **{field: value}), CpEvent)


@pytest.mark.parametrize(
    ("field", "value"),
    [("wh", -1), ("micro_eur", -1), ("power_w", -5), ("seq", -1), ("wh", 10**9 + 1), ("power_w", 10**7 + 1)],
)
def test_out_of_range_figures_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(with_changes(READING, **{field: value}), CpEvent)


def test_a_negative_or_fractional_ticket_is_refused() -> None:
    ticket = SAMPLES[DriverUpdate][3]
    for change in ({"wh": -1}, {"micro_eur": 0.5}, {"revision": 0}):
        with pytest.raises(ProtocolError):
            decode(with_changes(ticket, **change), DriverUpdate)


@pytest.mark.parametrize("price", [-1, 100 * 10**6 + 1, 0.35])
def test_price_out_of_range_or_not_whole_micro_euros_is_refused(price: float) -> None:
    with pytest.raises(ProtocolError):
        decode(with_changes(START, price=price), CpCommand)


@pytest.mark.parametrize(
    "cp_id",
    [
        "CP 1",
        " CP1",
        "CP1 ",
        "",
        "C" * 65,
        "-CP1",
        ".CP1",
        "CP/1",
        "CP\t1",
        "CP\n1",
        "ÇP1",
        "stop-all",
        "resume-all",
    ],
    ids=[
        "inner-space",
        "leading-space",
        "trailing-space",
        "empty",
        "65-chars",
        "leading-dash",
        "leading-dot",
        "slash",
        "tab",
        "inner-newline",
        "non-ascii",
        "the-all-operation-stop",
        "the-all-operation-resume",
    ],
)
def test_bad_cp_id_is_refused(cp_id: str) -> None:
    with pytest.raises(ProtocolError):
        decode(with_changes(READING, cp_id=cp_id), CpEvent)
    with pytest.raises(ProtocolError):
        decode(with_changes(REGISTER, cp_id=cp_id), TcpFrame)


@pytest.mark.parametrize("cp_id", ["C", "CP-1", "cp_1.a", "C" * 64, "0", "stop-all-2", "resume"])
def test_good_cp_id_is_accepted(cp_id: str) -> None:
    assert decode(with_changes(READING, cp_id=cp_id), CpEvent).cp_id == cp_id


@pytest.mark.parametrize("driver_id", ["alice bob", "", "a" * 65])
def test_bad_driver_id_is_refused(driver_id: str) -> None:
    with pytest.raises(ProtocolError):
        decode(with_changes(SAMPLES[DriverRequest][0], driver_id=driver_id), DriverRequest)


@pytest.mark.parametrize("kind", ["cp", "driver"])
def test_id_with_trailing_newline_is_refused(kind: str) -> None:
    if kind == "cp":
        data, union = with_changes(READING, cp_id="CP-1\n"), CpEvent
    else:
        data, union = with_changes(SAMPLES[DriverRequest][0], driver_id="alice\n"), DriverRequest
    with pytest.raises(ProtocolError):
        decode(data, union)


def test_empty_and_too_long_idents_are_refused() -> None:
    with pytest.raises(ProtocolError):
        decode(with_changes(READING, session_id=""), CpEvent)
    with pytest.raises(ProtocolError):
        decode(with_changes(READING, session_id="s" * 81), CpEvent)
    assert decode(with_changes(READING, session_id="s" * 80), CpEvent).session_id == "s" * 80


@pytest.mark.parametrize("version", [1, 0, 99])
@pytest.mark.parametrize(
    ("kind", "message"), [(CpEvent, READING), (CpCommand, START)], ids=["event", "command"]
)
def test_other_schema_versions_are_refused(kind: object, message: msgspec.Struct, version: int) -> None:
    with pytest.raises(ProtocolError, match=f"schema version {version}"):
        decode(with_changes(message, v=version), kind)


def test_bad_enum_values_are_refused() -> None:
    with pytest.raises(ProtocolError):
        decode(with_changes(SAMPLES[CpEvent][2], reason="bored"), CpEvent)
    with pytest.raises(ProtocolError):
        decode(with_changes(SAMPLES[TcpFrame][2], health="MEH"), TcpFrame)
    with pytest.raises(ProtocolError):
        decode(with_changes(SAMPLES[TcpFrame][8], action="explode"), TcpFrame)


def test_location_longer_than_120_is_refused() -> None:
    assert decode(with_changes(REGISTER, location="x" * 120), TcpFrame)
    with pytest.raises(ProtocolError):
        decode(with_changes(REGISTER, location="x" * 121), TcpFrame)


def test_unknown_extra_fields_are_ignored() -> None:
    # Forward compatibility within one schema version: a new optional field is not an error.
    decoded = decode(with_changes(READING, extra="future"), CpEvent)
    assert decoded == READING


# ------------------------------------------------------------------ ids ----


def test_new_ids_are_unique_hex() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_message_ids_are_unique() -> None:
    messages = [StopCp(cp_id="CP-1") for _ in range(1000)]
    assert len({m.id for m in messages}) == 1000


# ----------------------------------------------------------- properties ----

UNIONS = list(SAMPLES)


@settings(max_examples=500, database=None, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    try:
        result = decode(data, CpEvent)
    except ProtocolError:
        return
    assert isinstance(result, typing.get_args(CpEvent))


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=4,
)
ALL_TAGS = [t.__struct_config__.tag for kind in UNIONS for t in typing.get_args(kind)]
FIELD_NAMES = sorted({f for kind in UNIONS for t in typing.get_args(kind) for f in t.__struct_fields__})


@settings(max_examples=200, database=None, deadline=None)
@given(
    tag=st.sampled_from([*ALL_TAGS, "nope"]),
    fields=st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=6),
    kind_index=st.integers(min_value=0, max_value=len(UNIONS) - 1),
)
def test_arbitrary_json_objects_raise_only_protocol_error(
    tag: str, fields: dict[str, Any], kind_index: int
) -> None:
    kind = UNIONS[kind_index]
    data = json.dumps({"type": tag, **fields}).encode()
    try:
        result = decode(data, kind)
    except ProtocolError:
        return
    assert isinstance(result, typing.get_args(kind))
