"""One connected charger as a charging point of evcharge: its calls mapped, central's commands done.

A `ChargerSession` is made fresh for every WebSocket connection. It answers
the charger's calls (boot, status, authorisation, the transaction messages,
which go through the `TransactionRecorder`), keeps the charger's health for its
central link, and carries out what central asks of the charger (remote start
and stop, availability) through its `Dialect`. Transaction messages of one
charger are applied one at a time, whichever of its connections they came on.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from evcharge.errors import ConnectionLost, StoreUnavailable
from evcharge.gateway import auth, transactions
from evcharge.gateway.authorisation import ACCEPTED, Authoriser
from evcharge.gateway.central_link import CentralLink, Identity
from evcharge.gateway.connection import Answer, CallRefused, NoAnswer, OcppConnection, Reply
from evcharge.gateway.dialects import Dialect, dialect
from evcharge.gateway.metrics import Metrics
from evcharge.gateway.recorder import TransactionRecorder, Unacknowledged
from evcharge.gateway.registry import Live, Registry
from evcharge.gateway.settings import GatewaySettings
from evcharge.gateway.store import ChargerRecord, GatewayStore, PendingStart
from evcharge.gateway.tasks import OwnedTasks
from evcharge.gateway.transactions import BadValue, Binding, Outcome
from evcharge.gateway.wire import CallIn, ErrorCode, Version
from evcharge.protocol.messages import EndReason, SessionRefused
from evcharge.runtime.retry import LinkWatch, RetryPolicy

log = logging.getLogger("evcharge.gateway")

# Calls a charger makes that need no more than an acknowledgement here.
ACKNOWLEDGED = frozenset(
    {
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "LogStatusNotification",
        "SecurityEventNotification",
        "SignedFirmwareStatusNotification",
        "NotifyEvent",
        "NotifyReport",
        "NotifyMonitoringReport",
        "NotifyChargingLimit",
        "NotifyCustomerInformation",
        "NotifyDisplayMessages",
        "NotifyEVChargingNeeds",
        "NotifyEVChargingSchedule",
        "ReportChargingProfiles",
        "ReservationStatusUpdate",
        "ClearedChargingLimit",
        "PublishFirmwareStatusNotification",
    }
)


@dataclass
class Services:
    """What every charger session shares: one of each per gateway process."""

    settings: GatewaySettings
    store: GatewayStore
    recorder: TransactionRecorder
    authoriser: Authoriser
    registry: Registry
    metrics: Metrics
    tasks: OwnedTasks
    instance: str
    central_watch: LinkWatch
    kafka_watch: LinkWatch
    central_tls: ssl.SSLContext | None  # with --ca: the links to central's monitor port speak TLS
    policy: RetryPolicy
    stop: asyncio.Event


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ChargerSession:
    def __init__(
        self, conn: OcppConnection, record: ChargerRecord, admitted: str, services: Services
    ) -> None:
        self.conn = conn
        self.cp_id = conn.cp_id
        self.record = record
        self.admitted = admitted
        self.dialect: Dialect = dialect(conn.version)
        self._s = services
        self._live: Live | None = None
        self._handlers: dict[str, Callable[[CallIn, str], Awaitable[Answer]]] = {
            "BootNotification": self._boot,
            "Heartbeat": self._heartbeat,
            "StatusNotification": self._status,
            "Authorize": self._authorize,
            "DataTransfer": self._data_transfer,
        }
        if conn.version is Version.V16:
            self._handlers |= {
                "StartTransaction": self._start_16,
                "MeterValues": self._meter_values_16,
                "StopTransaction": self._stop_16,
            }
        else:
            self._handlers |= {"TransactionEvent": self._transaction_event, "MeterValues": self._acknowledge}

    @property
    def version(self) -> Version:
        return self.conn.version

    # ---------------------------------------------------------- lifetime

    async def run(self) -> str:
        """Serve the connection until it ends; why it ended."""
        s = self._s
        live, loser = s.registry.attach(self)
        if loser is self:
            await self.conn.close("superseded by a newer connection of the same charger", 4000)
            return self.conn.close_reason
        self._live = live
        live.health.stop(self.record.stopped)
        if loser is not None:
            log.info("%s reconnected: the new connection replaces the old one", self.cp_id)
            await loser.conn.close("replaced by a new connection of the same charger", 4000)
        if self.admitted == "pending":
            await s.store.confirm_password(self.cp_id)
            log.info("%s joined: it connected with the password the gateway set", self.cp_id)
        s.metrics.connection(self.version, +1)
        try:
            if self.record.booted:
                self._start_link()  # a reconnect without a reboot: no BootNotification comes
                self._resend_stops()
            return await self.conn.serve(self.handle)
        finally:
            s.metrics.connection(self.version, -1)
            if s.registry.detach(self):
                log.info("%s disconnected: %s", self.cp_id, self.conn.close_reason)

    def _start_link(self) -> None:
        assert self._live is not None
        s, live = self._s, self._live

        def make() -> CentralLink:
            record = self.record
            location = s.settings.location or f"{record.vendor} {record.model}".strip() or "OCPP charger"
            identity = Identity(
                cp_id=self.cp_id,
                location=location[:120],
                price=s.settings.price,
                max_w=s.settings.max_w,
                instance=s.instance,
                token=s.settings.join_token,
                secret=record.monitor_secret if s.settings.join_token else None,
            )
            return CentralLink(
                identity,
                s.settings.central,
                tls=s.central_tls,
                keep_key=self._keep_key,
                health=live.health.verdict,
                heartbeat_interval_s=s.settings.heartbeat_interval_s,
                watch=s.central_watch,
                policy=s.policy,
            )

        def run(link: CentralLink) -> asyncio.Task[None]:
            return s.tasks.start(self._link(link), name=f"central link {self.cp_id}")

        s.registry.start_link(live, make, run)

    async def _keep_key(self, key: str) -> None:
        """The key central issued at registration: kept before the events waiting for it go."""
        if await self._s.store.keep_engine_key(self.cp_id, key):
            log.debug("%s: kept the key its events are signed with", self.cp_id)
            self._s.recorder.relay.wake()

    async def _link(self, link: CentralLink) -> None:
        await link.run(self._s.stop)
        if link.refusal is not None:
            log.warning("%s: %s; closing its connection", self.cp_id, link.refusal)
            live = self._s.registry.get(self.cp_id)
            if live is not None:
                await live.session.conn.close(link.refusal, 1008)

    def _resend_stops(self) -> None:
        """A stop asked while the charger was away is asked again now that it is back."""

        async def resend() -> None:
            txn = await self._s.store.running_txn(self.cp_id)
            if txn is not None and txn.stop_reason is not None:
                await self.stop_transaction(txn.tx_id, txn.stop_reason)

        self._s.tasks.start(resend(), name=f"resend stop {self.cp_id}")

    # -------------------------------------------------------- dispatch

    async def handle(self, call: CallIn, frame: str) -> Answer:
        handler = self._handlers.get(call.action)
        if handler is None:
            if call.action in ACKNOWLEDGED:
                return Answer({})
            await self._s.recorder.dead_letter(
                self.cp_id, self._source, frame, f"{call.action} is not handled"
            )
            raise Reply(ErrorCode.NOT_IMPLEMENTED, f"{call.action} is not handled by this central system")
        try:
            return await handler(call, frame)
        except BadValue as exc:
            await self._s.recorder.dead_letter(self.cp_id, self._source, frame, str(exc))
            raise Reply(ErrorCode.PROPERTY, str(exc)) from None
        except Unacknowledged as exc:
            self._s.kafka_watch.failed(exc)
            raise NoAnswer from None
        except StoreUnavailable as exc:
            raise Reply(ErrorCode.INTERNAL, f"the gateway cannot record now: {exc}") from None

    @property
    def _source(self) -> str:
        return f"ocpp:{self.version.value}"

    async def _acknowledge(self, call: CallIn, frame: str) -> Answer:
        return Answer({})

    async def _heartbeat(self, call: CallIn, frame: str) -> Answer:
        return Answer({"currentTime": now_text()})

    async def _data_transfer(self, call: CallIn, frame: str) -> Answer:
        return Answer({"status": "UnknownVendorId"})

    async def _boot(self, call: CallIn, frame: str) -> Answer:
        s = self._s
        boot = self.dialect.boot(call.payload)
        first = not self.record.booted
        await s.store.booted(self.cp_id, boot.vendor, boot.model)
        self.record = await s.store.charger(self.cp_id) or self.record
        if first:
            log.info("%s booted: %s %s, OCPP %s", self.cp_id, boot.vendor, boot.model, self.version.label)
        self._start_link()
        answer = {"currentTime": now_text(), "interval": s.settings.charger_heartbeat_s, "status": ACCEPTED}
        return Answer(answer, self._after_boot)

    async def _after_boot(self) -> None:
        s = self._s
        if s.settings.join_token is not None and self.record.credentials.password_hash is None:
            await self._issue_password()
        if self.record.stopped:
            await self.set_available(False)

    async def _issue_password(self) -> None:
        """Give a new charger a password of its own: from now on only it opens this charger id."""
        password = auth.new_password()
        await self._s.store.set_pending_password(self.cp_id, auth.hash_password(password))
        action, payload = self.dialect.set_password(password)
        try:
            result = await self.conn.call(action, payload)
        except (CallRefused, TimeoutError, ConnectionLost) as exc:
            log.warning("%s: could not set its password (%s); it will be asked again", self.cp_id, exc)
            return
        if self.dialect.accepted(action, result):
            await self._s.store.confirm_password(self.cp_id)
            log.info("%s took the password the gateway set: only it opens this charger id now", self.cp_id)
        else:
            log.warning("%s refused the password the gateway set (%s)", self.cp_id, result)

    async def _status(self, call: CallIn, frame: str) -> Answer:
        status = self.dialect.status(call.payload)
        live = self._live
        if live is not None and live.health.report(status.where, status.status, status.error_code):
            health, detail = live.health.verdict()
            log.info("%s health %s%s", self.cp_id, health.value, f": {detail}" if detail else "")
            if live.link is not None:
                live.link.health_changed()
        return Answer({})

    async def _authorize(self, call: CallIn, frame: str) -> Answer:
        token = self.dialect.id_token(call.payload)
        verdict = await self._s.authoriser.authorise(self.cp_id, token)
        return Answer(self.dialect.id_token_answer(verdict.status))

    # ------------------------------------------------------ transactions

    async def _transaction(
        self,
        key: str,
        frame: str,
        decide: Callable[[sqlite3.Connection, Binding | None], Outcome],
        bind: Callable[[], Awaitable[Binding | None]] | None = None,
        *,
        action: str,
    ) -> Answer:
        """Apply one transaction message once (who it is for is found first, unless it is a replay)."""
        assert self._live is not None
        store = self._s.store
        async with self._live.tx_lock:
            bound = None
            if bind is not None and await store.answer_of(self.cp_id, key) is None:
                bound = await bind()

            def run(db: sqlite3.Connection) -> Outcome:
                if bound is not None:
                    GatewayStore.consume_pending(db, bound.session_id)
                return decide(db, bound)

            applied = await self._s.recorder.apply(
                self.cp_id, key, run, frame=frame, source=self._source, action=action
            )
        self._s.kafka_watch.succeeded()
        outcome = applied.outcome
        if outcome is not None and outcome.dead_letter is not None:
            log.warning("%s: %s: recorded as a dead letter and answered", self.cp_id, outcome.dead_letter)
        if outcome is not None and outcome.note is not None:
            log.warning("%s: %s", self.cp_id, outcome.note)
        return Answer(applied.answer)

    async def _bind(self, token: str | None, remote_start_id: int | None = None) -> Binding | None:
        if not token and remote_start_id is None:
            return None
        verdict = await self._s.authoriser.authorise(self.cp_id, token or "", remote_start_id)
        return verdict.start.binding if verdict.start is not None else None

    async def _start_16(self, call: CallIn, frame: str) -> Answer:
        payload, lenient = call.payload, self._s.settings.lenient
        transactions.timestamp(payload["timestamp"], lenient=lenient)  # refused before anyone is asked

        def decide(db: sqlite3.Connection, binding: Binding | None) -> Outcome:
            # The id comes from the store's counter in the same transaction: unique, never reused.
            tx_id = GatewayStore.next_tx_id(db, self.cp_id)
            return transactions.start_16(self.cp_id, tx_id, payload, binding, lenient=lenient)

        async def bind() -> Binding | None:
            return await self._bind(str(payload["idTag"]))

        key = transactions.message_key("start", payload)
        return await self._transaction(key, frame, decide, bind, action="StartTransaction")

    async def _meter_values_16(self, call: CallIn, frame: str) -> Answer:
        payload = call.payload
        tx_id = payload.get("transactionId")
        if tx_id is None:
            return Answer({})  # clock-aligned values outside a transaction: nothing to bill

        def decide(db: sqlite3.Connection, _: Binding | None) -> Outcome:
            txn = GatewayStore.txn_in(db, self.cp_id, str(tx_id))
            return transactions.meter_values_16(txn, payload)

        key = transactions.message_key(f"meter:{tx_id}", payload)
        return await self._transaction(key, frame, decide, action="MeterValues")

    async def _stop_16(self, call: CallIn, frame: str) -> Answer:
        payload, lenient = call.payload, self._s.settings.lenient
        transactions.timestamp(payload["timestamp"], lenient=lenient)
        tx_id = str(payload["transactionId"])

        def decide(db: sqlite3.Connection, _: Binding | None) -> Outcome:
            txn = GatewayStore.txn_in(db, self.cp_id, tx_id)
            outcome = transactions.stop_16(txn, payload, lenient=lenient)
            if txn is not None:
                GatewayStore.forget_readings(db, self.cp_id, f"meter:{tx_id}:")
            return outcome

        return await self._transaction(f"stop:{tx_id}", frame, decide, action="StopTransaction")

    async def _transaction_event(self, call: CallIn, frame: str) -> Answer:
        payload, lenient = call.payload, self._s.settings.lenient
        transactions.timestamp(payload["timestamp"], lenient=lenient)
        info = payload["transactionInfo"]
        tx_id = str(info["transactionId"])
        store = self._s.store

        async def bind() -> Binding | None:
            if not transactions.needs_binding_201(await store.txn(self.cp_id, tx_id), payload):
                return None
            return await self._bind((payload.get("idToken") or {}).get("idToken"), info.get("remoteStartId"))

        def decide(db: sqlite3.Connection, binding: Binding | None) -> Outcome:
            txn = GatewayStore.txn_in(db, self.cp_id, tx_id)
            outcome = transactions.transaction_event_201(self.cp_id, txn, payload, binding, lenient=lenient)
            if payload["eventType"] == "Ended" and txn is not None:
                GatewayStore.forget_readings(db, self.cp_id, f"tx:{tx_id}:")
            return outcome

        key = transactions.transaction_key_201(payload)
        action = f"TransactionEvent.{payload['eventType']}"
        return await self._transaction(key, frame, decide, bind, action=action)

    # --------------------------------------------------- central's asks

    async def remote_start(self, start: PendingStart) -> None:
        """Central authorised a driver here: ask the charger to start, or tell central why not."""
        if len(start.driver_id) > self.dialect.id_token_max:
            await self._refuse(
                start, f"driver id longer than OCPP {self.version.label} allows for an id token"
            )
            return
        action, payload = self.dialect.remote_start(start.driver_id, start.remote_start_id)
        try:
            result = await self.conn.call(action, payload)
        except (CallRefused, TimeoutError, ConnectionLost) as exc:
            await self._refuse(start, f"the charger did not take the remote start ({exc or 'no answer'})")
            return
        if not self.dialect.accepted(action, result):
            await self._refuse(start, f"the charger rejected the remote start ({result.get('status')})")

    async def _refuse(self, start: PendingStart, reason: str) -> None:
        if await self._s.store.drop_pending(start.session_id):
            log.info("%s refused session %s: %s", self.cp_id, start.session_id[:8], reason)
            await self._s.recorder.publish(
                [SessionRefused(cp_id=self.cp_id, session_id=start.session_id, reason=reason[:200])]
            )

    async def stop_transaction(self, tx_id: str, reason: EndReason) -> None:
        await self._s.store.set_stop_reason(self.cp_id, tx_id, reason)
        action, payload = self.dialect.remote_stop(tx_id)
        try:
            result = await self.conn.call(action, payload)
        except (CallRefused, TimeoutError, ConnectionLost) as exc:
            log.warning("%s: remote stop of transaction %s not taken (%s)", self.cp_id, tx_id, exc)
            return
        if not self.dialect.accepted(action, result):
            log.warning("%s rejected the remote stop of transaction %s", self.cp_id, tx_id)

    async def set_available(self, operative: bool) -> None:
        action, payload = self.dialect.availability(operative)
        try:
            result = await self.conn.call(action, payload)
        except (CallRefused, TimeoutError, ConnectionLost) as exc:
            log.warning("%s: change of availability not taken (%s)", self.cp_id, exc)
            return
        if not self.dialect.accepted(action, result):
            log.warning("%s rejected the change of availability (%s)", self.cp_id, result.get("status"))

    def operator_stopped(self, stopped: bool) -> None:
        live = self._live
        self.record = replace(self.record, stopped=stopped)
        if live is not None and live.health.stop(stopped) and live.link is not None:
            live.link.health_changed()
