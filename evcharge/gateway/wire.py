"""OCPP-J on the wire, both versions: text in, a typed frame (or the CallError it deserves) out.

Pure. `parse` never raises: a frame that is not JSON, not an OCPP-J array, of an
unknown message type, an action the version does not have, or a payload outside
the version's JSON schema (the `ocpp` library's schemas and validators) becomes
an `Unusable` carrying the CallError to send back and the reason to record. The
error codes are the ones each version's specification spells (1.6's errata keep
"FormationViolation" and "OccurenceConstraintViolation").
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from jsonschema.exceptions import ValidationError as SchemaError
from ocpp.messages import get_validator
from ocpp.v16.enums import Action as Action16
from ocpp.v201.enums import Action as Action201

CALL, CALL_RESULT, CALL_ERROR = 2, 3, 4
MAX_ID_LENGTH = 36  # OCPP-J: a message id is at most 36 characters


class Version(enum.StrEnum):
    V16 = "ocpp1.6"
    V201 = "ocpp2.0.1"

    @property
    def schema(self) -> str:
        """The version name the `ocpp` library's schemas are filed under."""
        return "1.6" if self is Version.V16 else "2.0.1"

    @property
    def label(self) -> str:
        return self.schema


SUBPROTOCOLS = (Version.V201, Version.V16)  # in order of preference


class ErrorCode(enum.Enum):
    """The meaning of a CallError; `spelling(version)` is how that version writes it."""

    NOT_IMPLEMENTED = "NotImplemented"
    NOT_SUPPORTED = "NotSupported"
    INTERNAL = "InternalError"
    PROTOCOL = "ProtocolError"
    SECURITY = "SecurityError"
    FORMAT = "FormatViolation"
    PROPERTY = "PropertyConstraintViolation"
    OCCURRENCE = "OccurrenceConstraintViolation"
    TYPE = "TypeConstraintViolation"
    GENERIC = "GenericError"
    MESSAGE_TYPE = "MessageTypeNotSupported"
    RPC = "RpcFrameworkError"

    def spelling(self, version: Version) -> str:
        if version is Version.V16:
            return _SPELLING_16.get(self, self.value)
        return _SPELLING_201.get(self, self.value)


_SPELLING_16 = {
    ErrorCode.FORMAT: "FormationViolation",
    ErrorCode.OCCURRENCE: "OccurenceConstraintViolation",
    # 1.6 has neither of these: the nearest code it does have.
    ErrorCode.MESSAGE_TYPE: "ProtocolError",
    ErrorCode.RPC: "ProtocolError",
}
_SPELLING_201 = {ErrorCode.OCCURRENCE: "OccurenceConstraintViolation"}  # as 2.0.1's schema spells it


@dataclass(frozen=True)
class CallIn:
    unique_id: str
    action: str
    payload: dict[str, Any]
    tolerated: tuple[str, ...] = ()  # schema findings let through in lenient mode


@dataclass(frozen=True)
class ResultIn:
    unique_id: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class ErrorIn:
    unique_id: str
    code: str
    description: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Unusable:
    """A frame that cannot be used. `reply` is the CallError text to send, or None when the
    frame was a result (a result is never answered)."""

    reason: str
    code: ErrorCode
    reply: str | None
    action: str = ""


Incoming = CallIn | ResultIn | ErrorIn | Unusable

_ACTIONS = {Version.V16: {a.value for a in Action16}, Version.V201: {a.value for a in Action201}}


def is_action(version: Version, name: object) -> bool:
    """Whether `name` is an action of this version of OCPP (either direction)."""
    return isinstance(name, str) and name in _ACTIONS[version]


def parse(text: str | bytes, version: Version, *, lenient: bool = False) -> Incoming:
    """One WebSocket message as a frame; every way it can be wrong is an `Unusable`."""
    try:
        frame = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        return _unusable(version, "-1", ErrorCode.FORMAT, f"not JSON: {exc}")
    if not isinstance(frame, list) or not frame:
        return _unusable(version, "-1", ErrorCode.RPC, "an OCPP-J message is a non-empty JSON array")
    kind = frame[0]
    unique_id = frame[1] if len(frame) > 1 and isinstance(frame[1], str) else None
    reply_id = unique_id if unique_id is not None and len(unique_id) <= MAX_ID_LENGTH else "-1"
    if isinstance(kind, bool) or kind not in (CALL, CALL_RESULT, CALL_ERROR):
        return _unusable(version, reply_id, ErrorCode.MESSAGE_TYPE, f"message type {kind!r} is not supported")
    if unique_id is None or not unique_id or len(unique_id) > MAX_ID_LENGTH:
        reason = f"message id must be a string of 1 to {MAX_ID_LENGTH} characters"
        return _unusable(version, "-1", ErrorCode.RPC, reason, answer=kind == CALL)
    if kind == CALL_RESULT:
        if len(frame) != 3 or not isinstance(frame[2], dict):
            return _unusable(
                version, reply_id, ErrorCode.RPC, "a CallResult is [3, id, {payload}]", answer=False
            )
        return ResultIn(unique_id, frame[2])
    if kind == CALL_ERROR:
        if (
            len(frame) != 5
            or not all(isinstance(x, str) for x in frame[2:4])
            or not isinstance(frame[4], dict)
        ):
            reason = "a CallError is [4, id, code, description, {details}]"
            return _unusable(version, reply_id, ErrorCode.RPC, reason, answer=False)
        return ErrorIn(unique_id, frame[2], frame[3], frame[4])
    if len(frame) != 4 or not isinstance(frame[2], str) or not isinstance(frame[3], dict):
        return _unusable(version, reply_id, ErrorCode.RPC, "a Call is [2, id, action, {payload}]")
    action, payload = frame[2], frame[3]
    if action not in _ACTIONS[version]:
        return _unusable(
            version,
            reply_id,
            ErrorCode.NOT_SUPPORTED,
            f"{action[:60]!r} is not an OCPP {version.label} action",
        )
    finding = validate(version, action, payload, request=True, lenient=lenient)
    if isinstance(finding, Unusable):
        return _unusable(version, reply_id, finding.code, finding.reason, action=action)
    return CallIn(unique_id, action, payload, finding)


def validate(
    version: Version, action: str, payload: dict[str, Any], *, request: bool, lenient: bool = False
) -> Unusable | tuple[str, ...]:
    """Check a payload against its schema: the findings tolerated, or why it is refused."""
    try:
        validator = get_validator(CALL if request else CALL_RESULT, action, version.schema)
    except OSError:
        return Unusable(f"no schema for {action}", ErrorCode.NOT_IMPLEMENTED, None, action)
    tolerated: list[str] = []
    for error in sorted(validator.iter_errors(payload), key=lambda e: list(e.path)):
        if lenient and error.validator == "additionalProperties":
            tolerated.append(_where(error) + error.message)
            continue
        return Unusable(_where(error) + error.message[:200], _code_for(error), None, action)
    return tuple(tolerated)


def _where(error: SchemaError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return f"{path}: " if path else ""


def _code_for(error: SchemaError) -> ErrorCode:
    if error.validator == "type":
        return ErrorCode.TYPE
    if error.validator == "required":
        return ErrorCode.OCCURRENCE if error.absolute_path else ErrorCode.PROTOCOL
    if error.validator in ("minItems", "maxItems", "uniqueItems"):
        return ErrorCode.OCCURRENCE
    if error.validator in ("maxLength", "minLength"):
        return ErrorCode.TYPE  # a CiString20 is a type in OCPP
    if error.validator in ("enum", "minimum", "maximum", "pattern", "format", "multipleOf"):
        return ErrorCode.PROPERTY
    return ErrorCode.FORMAT  # additionalProperties and anything structural


def _unusable(
    version: Version, unique_id: str, code: ErrorCode, reason: str, *, answer: bool = True, action: str = ""
) -> Unusable:
    return Unusable(reason, code, call_error(unique_id, code, reason, version) if answer else None, action)


def call_error(unique_id: str, code: ErrorCode, description: str, version: Version) -> str:
    return _dump([CALL_ERROR, unique_id, code.spelling(version), description[:255], {}])


def call_result(unique_id: str, payload: dict[str, Any]) -> str:
    return _dump([CALL_RESULT, unique_id, payload])


def call(unique_id: str, action: str, payload: dict[str, Any]) -> str:
    return _dump([CALL, unique_id, action, payload])


def _dump(frame: list[Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
