"""What an OCPP transaction message means for billing: the evcharge events it derives and the answer.

Pure. Each function takes one transaction message (1.6 StartTransaction,
MeterValues, StopTransaction; 2.0.1 TransactionEvent), the transaction as the
store knows it and who it is for, and returns an `Outcome`: the transaction's
next state, the `SessionStarted` / `MeterReading` / `SessionEnded` it derives
(numbered with the next evcharge `seq`), the answer for the charger, and a
dead-letter reason when it belongs to no transaction we know. The gateway keeps
the outcome under the message's `message_key` and gives the same answer to a
replay, so a message is applied once however often the charger sends it. Readings
are cumulative Wh since the transaction's meter start; the meter is the truth,
so an older reading arriving after a newer one is acknowledged but derives nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from evcharge.protocol.messages import EndReason, MeterReading, SessionEnded, SessionStarted
from evcharge.protocol.units import cost_micro_eur

CpEvent = SessionStarted | MeterReading | SessionEnded
ENERGY = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"
MAX_WH = 10**9


class BadValue(ValueError):
    """A field the schema lets through but that cannot be billed (a timestamp, a meter value)."""


@dataclass(frozen=True)
class Binding:
    """Who a transaction is for: the session central chose and its price."""

    session_id: str
    driver_id: str
    price: int


@dataclass(frozen=True)
class Txn:
    """One OCPP transaction as the gateway keeps it."""

    cp_id: str
    tx_id: str  # OCPP transactionId: 1.6 the integer the gateway gave, 2.0.1 the charger's
    session_id: str | None  # None while nobody is known to be charging (2.0.1, no idToken yet)
    driver_id: str
    price: int
    meter_start_wh: int | None  # None until the first energy register is known
    started_at: float
    last_seq: int = -1
    last_wh: int = 0
    ended: bool = False
    stop_reason: EndReason | None = None  # why the gateway asked the charger to stop, if it did


@dataclass(frozen=True)
class Outcome:
    answer: dict[str, Any]
    txn: Txn | None = None  # the transaction's next state (None: nothing to store)
    events: list[CpEvent] = field(default_factory=list)
    dead_letter: str | None = None  # why this message belongs to no known transaction
    note: str | None = None  # a line for the log


def message_key(kind: str, payload: dict[str, Any]) -> str:
    """A replay's identity: the same message sent again has the same key."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{kind}:{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"


def timestamp(text: str, *, lenient: bool) -> float:
    """An OCPP date-time as epoch seconds; without a time zone it is UTC in lenient mode only."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadValue(f"timestamp {text[:40]!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        if not lenient:
            raise BadValue(f"timestamp {text[:40]!r} has no time zone")
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# ------------------------------------------------------------------ meters


@dataclass(frozen=True)
class Sample:
    wh: int | None = None  # the energy register, Wh
    power_w: int | None = None


def sample_16(meter_values: list[dict[str, Any]]) -> Sample:
    """The last energy register and power among 1.6 meterValue entries (values are strings)."""
    wh = power = None
    for entry in meter_values:
        for sampled in entry.get("sampledValue", []):
            if sampled.get("format", "Raw") != "Raw" or sampled.get("phase"):
                continue
            measurand = sampled.get("measurand", ENERGY)
            unit = sampled.get("unit")
            if measurand == ENERGY:
                wh = _scaled(sampled.get("value"), {"Wh": 0, "kWh": 3}, unit or "Wh")
            elif measurand == POWER:
                power = _scaled(sampled.get("value"), {"W": 0, "kW": 3}, unit or "W")
    return Sample(wh, power)


def sample_201(meter_values: list[dict[str, Any]]) -> Sample:
    """The same for 2.0.1, whose values are numbers with a unit and a power-of-ten multiplier."""
    wh = power = None
    for entry in meter_values:
        for sampled in entry.get("sampledValue", []):
            if sampled.get("phase"):
                continue
            measurand = sampled.get("measurand", ENERGY)
            unit_of = sampled.get("unitOfMeasure") or {}
            unit, multiplier = unit_of.get("unit"), int(unit_of.get("multiplier", 0))
            if measurand == ENERGY:
                wh = _scaled(sampled.get("value"), {"Wh": 0, "kWh": 3}, unit or "Wh", multiplier)
            elif measurand == POWER:
                power = _scaled(sampled.get("value"), {"W": 0, "kW": 3}, unit or "W", multiplier)
    return Sample(wh, power)


def _scaled(value: Any, units: dict[str, int], unit: str, multiplier: int = 0) -> int:
    if unit not in units:
        raise BadValue(f"unit {unit!r} is not one of {', '.join(units)}")
    try:
        number = Decimal(str(value)).scaleb(units[unit] + multiplier)
    except (InvalidOperation, ValueError):
        raise BadValue(f"meter value {str(value)[:30]!r} is not a number") from None
    if not number.is_finite() or not 0 <= number <= MAX_WH:
        raise BadValue(f"meter value {str(value)[:30]!r} is out of range")
    return int(number)  # truncated to the whole Wh delivered, as evcharge's meter does


# ------------------------------------------------------------------ pieces


def started(txn: Txn, binding: Binding, at: float) -> tuple[Txn, SessionStarted]:
    bound = replace(txn, session_id=binding.session_id, driver_id=binding.driver_id, price=binding.price)
    bound = replace(bound, last_seq=0)
    return bound, SessionStarted(
        cp_id=txn.cp_id,
        session_id=binding.session_id,
        driver_id=binding.driver_id,
        seq=0,
        started_at=at,
        price=binding.price,
    )


def reading(txn: Txn, sample: Sample) -> tuple[Txn, list[CpEvent]]:
    """A reading of a running transaction: one MeterReading if it says something new."""
    if txn.ended or sample.wh is None:
        return txn, []
    if txn.meter_start_wh is None:
        txn = replace(txn, meter_start_wh=sample.wh)
    if txn.session_id is None:
        return txn, []
    wh = sample.wh - (txn.meter_start_wh or 0)
    if wh < txn.last_wh or wh < 0:
        return txn, []  # older than what was billed already: the meter only counts up
    seq = txn.last_seq + 1
    event = MeterReading(
        cp_id=txn.cp_id,
        session_id=txn.session_id,
        seq=seq,
        power_w=max(0, min(sample.power_w or 0, 10**7)),
        wh=wh,
        micro_eur=cost_micro_eur(wh, txn.price),
    )
    return replace(txn, last_seq=seq, last_wh=wh), [event]


def ended(txn: Txn, meter_stop_wh: int | None, at: float, reason: EndReason) -> tuple[Txn, list[CpEvent]]:
    if txn.ended:
        return txn, []
    start = txn.meter_start_wh if txn.meter_start_wh is not None else meter_stop_wh
    wh = txn.last_wh if meter_stop_wh is None or start is None else max(0, meter_stop_wh - start)
    closed = replace(txn, ended=True, last_wh=wh, meter_start_wh=start)
    if txn.session_id is None:
        return closed, []
    seq = txn.last_seq + 1
    event = SessionEnded(
        cp_id=txn.cp_id,
        session_id=txn.session_id,
        seq=seq,
        wh=wh,
        micro_eur=cost_micro_eur(wh, txn.price),
        ended_at=at,
        reason=txn.stop_reason or reason,
    )
    return replace(closed, last_seq=seq), [event]


# ------------------------------------------------------------------ 1.6

ID_TAG_ACCEPTED = {"status": "Accepted"}
ID_TAG_INVALID = {"status": "Invalid"}

_END_16 = {
    "EVDisconnected": EndReason.UNPLUGGED,
    "Local": EndReason.DRIVER,
    "DeAuthorized": EndReason.DRIVER,
    "Remote": EndReason.DRIVER,
    "EmergencyStop": EndReason.FAULT,
    "PowerLoss": EndReason.INTERRUPTED,
    "HardReset": EndReason.INTERRUPTED,
    "SoftReset": EndReason.INTERRUPTED,
    "Reboot": EndReason.INTERRUPTED,
}


def start_16(
    cp_id: str, tx_id: int, payload: dict[str, Any], binding: Binding | None, *, lenient: bool
) -> Outcome:
    """StartTransaction: a transaction with the id the gateway chose, for the session it is bound to.

    Refused (nobody authorised it): the charger still gets a transaction id, with
    idTagInfo Invalid, so that its meter values and stop are answered and not billed.
    """
    at = timestamp(payload["timestamp"], lenient=lenient)
    meter_start = int(payload["meterStart"])
    txn = Txn(cp_id, str(tx_id), None, payload["idTag"], 0, meter_start, at)
    if binding is None:
        return Outcome(
            {"transactionId": tx_id, "idTagInfo": ID_TAG_INVALID},
            replace(txn, ended=True),
            note=f"transaction {tx_id} for {payload['idTag']} was not authorised by central: not billed",
        )
    txn, event = started(txn, binding, at)
    return Outcome({"transactionId": tx_id, "idTagInfo": ID_TAG_ACCEPTED}, txn, [event])


def meter_values_16(txn: Txn | None, payload: dict[str, Any]) -> Outcome:
    tx_id = payload.get("transactionId")
    if tx_id is None:
        return Outcome({})  # clock-aligned values outside any transaction: nothing to bill
    if txn is None:
        return Outcome({}, dead_letter=f"MeterValues for transaction {tx_id}, which this gateway never gave")
    after, events = reading(txn, sample_16(payload.get("meterValue", [])))
    return Outcome({}, after if after != txn else None, events)


def stop_16(txn: Txn | None, payload: dict[str, Any], *, lenient: bool) -> Outcome:
    tx_id = payload["transactionId"]
    answer = {"idTagInfo": ID_TAG_ACCEPTED} if "idTag" in payload else {}
    if txn is None:
        return Outcome(
            answer, dead_letter=f"StopTransaction for transaction {tx_id}, which this gateway never gave"
        )
    at = timestamp(payload["timestamp"], lenient=lenient)
    last = sample_16(payload.get("transactionData", []))
    txn, events = reading(txn, last)
    reason = _END_16.get(payload.get("reason", "Local"), EndReason.COMPLETED)
    after, ended_events = ended(txn, int(payload["meterStop"]), at, reason)
    return Outcome(answer, after, events + ended_events)


# ------------------------------------------------------------------ 2.0.1

_END_201 = {
    **_END_16,
    "EnergyLimitReached": EndReason.COMPLETED,
    "SOCLimitReached": EndReason.COMPLETED,
    "StoppedByEV": EndReason.COMPLETED,
    "TimeLimitReached": EndReason.COMPLETED,
    "GroundFault": EndReason.FAULT,
    "OvercurrentFault": EndReason.FAULT,
    "PowerQuality": EndReason.FAULT,
    "ImmediateReset": EndReason.INTERRUPTED,
    "LocalOutOfCredit": EndReason.DRIVER,
    "MasterPass": EndReason.OPERATOR,
}


def transaction_key_201(payload: dict[str, Any]) -> str:
    return f"tx:{payload['transactionInfo']['transactionId']}:{payload['seqNo']}"


def transaction_event_201(
    cp_id: str, txn: Txn | None, payload: dict[str, Any], binding: Binding | None, *, lenient: bool
) -> Outcome:
    """TransactionEvent Started / Updated / Ended.

    The session starts (seq 0) at the first event that says who charges (a
    remoteStartId or an idToken) and that central accepted; energy is counted from
    the register at the transaction's start.
    """
    info = payload["transactionInfo"]
    tx_id = info["transactionId"]
    kind = payload["eventType"]
    at = timestamp(payload["timestamp"], lenient=lenient)
    sample = sample_201(payload.get("meterValue", []))
    answer: dict[str, Any] = {}
    if "idToken" in payload:
        answer["idTokenInfo"] = ID_TAG_ACCEPTED if binding is not None else ID_TAG_INVALID
    if txn is None:
        if kind != "Started":
            return Outcome(
                answer, dead_letter=f"TransactionEvent {kind} for transaction {tx_id}, never started here"
            )
        token = (payload.get("idToken") or {}).get("idToken", "")
        txn = Txn(cp_id, tx_id, None, token, 0, sample.wh, at)
    before = txn
    events: list[CpEvent] = []
    if txn.session_id is None and binding is not None and not txn.ended:
        txn, first = started(txn, binding, txn.started_at)
        events.append(first)
    txn, readings = reading(txn, sample)
    events += readings
    if kind == "Ended":
        reason = _END_201.get(info.get("stoppedReason", "Local"), EndReason.COMPLETED)
        txn, ending = ended(txn, sample.wh, at, reason)
        events += ending
    return Outcome(answer, txn if txn != before or kind == "Started" else None, events)


def needs_binding_201(txn: Txn | None, payload: dict[str, Any]) -> bool:
    """Whether this event may bind the transaction to a session (it says who, and nobody is bound)."""
    if txn is not None and (txn.session_id is not None or txn.ended):
        return False
    if txn is None and payload["eventType"] != "Started":
        return False
    return "idToken" in payload or "remoteStartId" in payload["transactionInfo"]
