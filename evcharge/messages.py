"""Every message evcharge sends, on Kafka and on TCP, and how it is encoded.

No I/O here: bytes in, typed and validated messages out (or `ProtocolError`),
typed messages in, bytes out. msgspec validates while it decodes, so a field of
the wrong type or out of range never reaches the logic behind it.
"""

from __future__ import annotations

import enum
import time
import uuid
from typing import Annotated, Literal

import msgspec

from evcharge.errors import ProtocolError

SCHEMA_VERSION = 1

CpId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")]
DriverId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")]
Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=80)]
Energy = Annotated[float, msgspec.Meta(ge=0, le=1e6)]
Money = Annotated[float, msgspec.Meta(ge=0, le=1e7)]
Power = Annotated[float, msgspec.Meta(ge=0, le=1e4)]
Price = Annotated[float, msgspec.Meta(ge=0, le=100)]
Seq = Annotated[int, msgspec.Meta(ge=0)]


def new_id() -> str:
    return uuid.uuid4().hex


class Health(enum.StrEnum):
    OK = "OK"
    KO = "KO"


class EndReason(enum.StrEnum):
    DRIVER = "driver"  # the driver asked to stop
    OPERATOR = "operator"  # the operator stopped the CP
    UNPLUGGED = "unplugged"  # the car was unplugged at the engine
    COMPLETED = "completed"  # the session reached its configured length
    FAULT = "fault"  # the engine raised KO while supplying
    ENGINE_FAILURE = "engine_failure"  # central saw the engine die; billed to the last reading it had
    INTERRUPTED = "interrupted"  # the engine restarted after a crash mid-session
    NOT_STARTED = "not_started"  # authorised, but the engine never started it


class DenyCode(enum.StrEnum):
    UNKNOWN_CP = "unknown_cp"
    BUSY = "busy"
    BROKEN = "broken"
    STOPPED = "stopped"
    DISCONNECTED = "disconnected"
    EXPIRED = "expired"
    NOT_YOURS = "not_yours"
    NO_SESSION = "no_session"


# ---------------------------------------------------------------- Kafka ----


class KafkaMessage(msgspec.Struct, kw_only=True, tag_field="type"):
    v: int = SCHEMA_VERSION
    id: str = msgspec.field(default_factory=new_id)
    ts: float = msgspec.field(default_factory=time.time)


# evcharge.driver.requests, keyed by driver_id


class ChargeRequest(KafkaMessage, tag="charge_request"):
    driver_id: DriverId
    cp_id: CpId
    request_id: Ident


class StopRequest(KafkaMessage, tag="stop_request"):
    driver_id: DriverId
    session_id: Ident


DriverRequest = ChargeRequest | StopRequest


# evcharge.driver.updates, keyed by driver_id


class RequestAccepted(KafkaMessage, tag="accepted"):
    driver_id: DriverId
    request_id: Ident
    session_id: Ident
    cp_id: CpId
    price_eur_kwh: Price


class RequestDenied(KafkaMessage, tag="denied"):
    driver_id: DriverId
    request_id: Ident
    cp_id: str
    code: DenyCode
    reason: str


class ChargingProgress(KafkaMessage, tag="progress"):
    driver_id: DriverId
    session_id: Ident
    cp_id: CpId
    seq: Seq
    kw: Power
    kwh: Energy
    eur: Money


class Ticket(KafkaMessage, tag="ticket"):
    driver_id: DriverId
    session_id: Ident
    request_id: str
    cp_id: CpId
    started_at: float
    ended_at: float
    kwh: Energy
    eur: Money
    price_eur_kwh: Price
    end_reason: EndReason


DriverUpdate = RequestAccepted | RequestDenied | ChargingProgress | Ticket


# evcharge.cp.commands, keyed by cp_id


class StartSupply(KafkaMessage, tag="start_supply"):
    cp_id: CpId
    session_id: Ident
    driver_id: DriverId
    price_eur_kwh: Price
    # An engine that reads this after the deadline (it was down) refuses it
    # rather than start a charge nobody is waiting for any more.
    expires_at: float
    # The engine instance the CP's monitor vouches for: a second engine running
    # with the same CP id (another host or state dir) must not supply it too.
    engine: str | None = None


class StopSupply(KafkaMessage, tag="stop_supply"):
    cp_id: CpId
    session_id: Ident
    reason: EndReason
    # Set when central has already closed the session (the engine was seen dead or
    # hung): the figures it billed, which the engine adopts so both records agree.
    billed_kwh: Energy | None = None
    billed_eur: Money | None = None


class StopCp(KafkaMessage, tag="stop_cp"):
    cp_id: CpId


class ResumeCp(KafkaMessage, tag="resume_cp"):
    cp_id: CpId


CpCommand = StartSupply | StopSupply | StopCp | ResumeCp


# evcharge.cp.events, keyed by cp_id; seq numbers every event of one session


class SessionStarted(KafkaMessage, tag="session_started"):
    cp_id: CpId
    session_id: Ident
    driver_id: DriverId
    seq: Seq
    started_at: float
    price_eur_kwh: Price


class MeterReading(KafkaMessage, tag="meter"):
    cp_id: CpId
    session_id: Ident
    seq: Seq
    kw: Power
    kwh: Energy
    eur: Money


class SessionEnded(KafkaMessage, tag="session_ended"):
    cp_id: CpId
    session_id: Ident
    seq: Seq
    kwh: Energy
    eur: Money
    ended_at: float
    reason: EndReason


class SessionRefused(KafkaMessage, tag="session_refused"):
    cp_id: CpId
    session_id: Ident
    reason: str


CpEvent = SessionStarted | MeterReading | SessionEnded | SessionRefused


# ------------------------------------------------------------------ TCP ----


class Frame(msgspec.Struct, kw_only=True, tag_field="type"):
    # Correlates a reply with its request on one connection.
    corr: int = 0


class Register(Frame, tag="register"):
    cp_id: CpId
    location: Annotated[str, msgspec.Meta(max_length=120)]
    price_eur_kwh: Price
    max_kw: Power
    health: Health
    instance: Ident  # one per monitor process: tells a crash-restart from a second live monitor
    engine: str | None = None  # the engine instance this monitor checks
    # Credentials when central requires them: the operator's join token the first
    # time, the secret central handed out ever after.
    token: str | None = None
    secret: str | None = None


class Registered(Frame, tag="registered"):
    cp_id: CpId
    secret: str | None = None  # issued when the CP joined with the join token: keep it


class Heartbeat(Frame, tag="heartbeat"):
    cp_id: CpId
    health: Health
    engine: str | None = None


class Ack(Frame, tag="ack"):
    pass


class ErrorReply(Frame, tag="error"):
    code: str
    reason: str


class HealthCheck(Frame, tag="health_check"):
    pass


class HealthStatus(Frame, tag="health_status"):
    cp_id: CpId
    health: Health
    supplying: bool
    session_id: str | None = None
    engine: str | None = None  # the engine process's instance id


class EngineControl(Frame, tag="control"):
    action: Literal["plug", "unplug", "fault", "clear", "status"]


class ControlResult(Frame, tag="control_result"):
    ok: bool
    detail: str


TcpFrame = (
    Register
    | Registered
    | Heartbeat
    | Ack
    | ErrorReply
    | HealthCheck
    | HealthStatus
    | EngineControl
    | ControlResult
)


# ------------------------------------------------------------- encoding ----

_encoder = msgspec.json.Encoder()
_decoders: dict[object, msgspec.json.Decoder] = {}


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes, kind: object) -> object:
    """Decode `data` as one of the union `kind`; anything else is a ProtocolError."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        message = decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(str(exc)) from None
    version = getattr(message, "v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ProtocolError(f"schema version {version} is not supported (this is {SCHEMA_VERSION})")
    return message


class DeadLetter(KafkaMessage, tag="dead_letter"):
    """A record a consumer could not use, kept with why and its original bytes."""

    source_topic: str
    partition: int
    offset: int
    consumer: str
    reason: str
    key: str | None
    payload: bytes  # msgspec writes bytes as base64 in JSON
