"""Every message evcharge sends, on Kafka and on TCP, and how it is encoded.

No I/O here: bytes in, typed and validated messages out (or `ProtocolError`),
typed messages in, bytes out. msgspec validates while it decodes, so a field of
the wrong type or out of range never reaches the logic behind it. Money and
energy are integers (`evcharge.protocol.units`): watt-hours, micro-euros, watts.
"""

from __future__ import annotations

import enum
import time
import uuid
from typing import Annotated, Any, Generic, TypeVar

import msgspec

from evcharge.errors import ProtocolError

SCHEMA_VERSION = 2

# `stop-all` and `resume-all` name operations on every CP in central's HTTP API, so no CP may be called so.
CpId = Annotated[str, msgspec.Meta(pattern=r"^(?!(?:stop|resume)-all\Z)[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")]
DriverId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")]
Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=80)]
WattHours = Annotated[int, msgspec.Meta(ge=0, le=10**9)]
MicroEuros = Annotated[int, msgspec.Meta(ge=0, le=10**13)]
Watts = Annotated[int, msgspec.Meta(ge=0, le=10**7)]
Price = Annotated[int, msgspec.Meta(ge=0, le=100 * 10**6)]  # micro-euros per kWh
Seq = Annotated[int, msgspec.Meta(ge=0)]
Pid = Annotated[int, msgspec.Meta(ge=0, le=2**31)]
Text = Annotated[str, msgspec.Meta(max_length=200)]


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
    CANNOT_RECORD = "cannot_record"  # the engine could not write its meter (disk full): it stopped
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


class EngineAction(enum.StrEnum):
    """What a person at the CP (or a script on its host) can do to the engine."""

    PLUG = "plug"
    UNPLUG = "unplug"
    FAULT = "fault"
    CLEAR = "clear"
    STATUS = "status"


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
    price: Price


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
    power_w: Watts
    wh: WattHours
    micro_eur: MicroEuros


class Ticket(KafkaMessage, tag="ticket"):
    """The bill of one session. A session has one ticket, or a first one and its replacement:

    central closes a session itself when its engine is gone (`provisional`: billed to the
    last reading central applied); the engine's own meter then confirms or corrects it
    with revision 2, which `replaces` the first. The meter is the truth.
    """

    driver_id: DriverId
    session_id: Ident
    request_id: str
    cp_id: CpId
    started_at: float
    ended_at: float
    wh: WattHours
    micro_eur: MicroEuros
    price: Price
    end_reason: EndReason
    revision: Annotated[int, msgspec.Meta(ge=1)] = 1
    provisional: bool = False
    replaces: str | None = None  # the id of the ticket this one replaces


DriverUpdate = RequestAccepted | RequestDenied | ChargingProgress | Ticket


# evcharge.cp.commands, keyed by cp_id


class StartSupply(KafkaMessage, tag="start_supply"):
    cp_id: CpId
    session_id: Ident
    driver_id: DriverId
    price: Price
    # The engine instance the CP's monitor vouches for: a second engine running
    # with the same CP id (another host or state dir), or one that restarted since,
    # must not supply it.
    engine: str | None = None


class StopSupply(KafkaMessage, tag="stop_supply"):
    cp_id: CpId
    session_id: Ident
    reason: EndReason


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
    price: Price


class MeterReading(KafkaMessage, tag="meter"):
    cp_id: CpId
    session_id: Ident
    seq: Seq
    power_w: Watts
    wh: WattHours
    micro_eur: MicroEuros


class SessionEnded(KafkaMessage, tag="session_ended"):
    cp_id: CpId
    session_id: Ident
    seq: Seq
    wh: WattHours
    micro_eur: MicroEuros
    ended_at: float
    reason: EndReason


class SessionRefused(KafkaMessage, tag="session_refused"):
    cp_id: CpId
    session_id: Ident
    reason: str


CpEvent = SessionStarted | MeterReading | SessionEnded | SessionRefused


class DeadLetter(KafkaMessage, tag="dead_letter"):
    """A record a consumer could not use, kept with why and its original bytes."""

    source_topic: str
    partition: int
    offset: int
    consumer: str
    reason: str
    key: str | None
    payload: bytes  # msgspec writes bytes as base64 in JSON


class CentralClaim(KafkaMessage, tag="central_claim"):
    """A central announcing itself, once a second: centrals on one Kafka must share one store."""

    instance: str
    store_id: str
    store: str  # where the store lives, for the message a refused central shows (no password)
    role: str  # leader, standby or single
    http: str
    tcp: str
    pid: int
    host: str


# ------------------------------------------------------------------ TCP ----


class Frame(msgspec.Struct, kw_only=True, tag_field="type"):
    # Correlates a reply with its request on one connection.
    corr: int = 0


class Register(Frame, tag="register"):
    cp_id: CpId
    location: Annotated[str, msgspec.Meta(max_length=120)]
    price: Price
    max_w: Watts
    health: Health
    instance: Ident  # one per monitor process: tells a crash-restart from a second live monitor
    pid: Pid = 0  # the monitor's process, as it says itself
    engine: str | None = None  # the engine instance this monitor checks
    # Credentials when central requires them: the CP's own secret, always, and the
    # operator's join token the first time. The monitor chooses its secret and keeps
    # it before it first registers, so an answer lost on the way cannot lock it out.
    token: str | None = None
    secret: str | None = None


class Registered(Frame, tag="registered"):
    cp_id: CpId
    central: str = ""  # the instance of central that answered


class Heartbeat(Frame, tag="heartbeat"):
    cp_id: CpId
    health: Health
    engine: str | None = None
    detail: Text = ""  # why the engine is KO, when it said


class Ack(Frame, tag="ack"):
    pass


class ErrorReply(Frame, tag="error"):
    code: str
    reason: str
    leader: str = ""  # with code "not_leader": where the leading central listens, when known


class HealthCheck(Frame, tag="health_check"):
    pass


class HealthStatus(Frame, tag="health_status"):
    cp_id: CpId
    health: Health
    supplying: bool
    session_id: str | None = None
    engine: str | None = None  # the engine process's instance id
    pid: Pid = 0
    detail: Text = ""  # why KO: a fault, or that it cannot record


class EngineControl(Frame, tag="control"):
    action: EngineAction


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

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


class Codec(Generic[T]):
    """Decodes one kind of message (a struct or a union of them); anything else is a ProtocolError."""

    def __init__(self, kind: Any) -> None:
        self.kind = kind
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(kind)

    def decode(self, data: bytes) -> T:
        try:
            message: Any = self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise ProtocolError(str(exc)) from None
        version = getattr(message, "v", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ProtocolError(f"schema version {version} is not supported (this is {SCHEMA_VERSION})")
        result: T = message
        return result


DRIVER_REQUESTS: Codec[ChargeRequest | StopRequest] = Codec(DriverRequest)
DRIVER_UPDATES: Codec[RequestAccepted | RequestDenied | ChargingProgress | Ticket] = Codec(DriverUpdate)
CP_COMMANDS: Codec[StartSupply | StopSupply | StopCp | ResumeCp] = Codec(CpCommand)
CP_EVENTS: Codec[SessionStarted | MeterReading | SessionEnded | SessionRefused] = Codec(CpEvent)
DEAD_LETTERS: Codec[DeadLetter] = Codec(DeadLetter)
CENTRAL_CLAIMS: Codec[CentralClaim] = Codec(CentralClaim)
TCP_FRAMES: Codec[Frame] = Codec(TcpFrame)
