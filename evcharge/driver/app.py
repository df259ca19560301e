"""`evcharge driver`: sends charge requests, shows every step live, keeps each ticket once.

Reads only its own updates: the one partition its id maps to, with its own
group for committed offsets, so a restarted driver is handed what it missed. A
provisional ticket (central billed a session whose engine was gone) is kept
open until the CP's meter confirms or corrects it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord

from evcharge.driver.conversation import Kind, Waiting, hear
from evcharge.driver.interactive import run_interactive
from evcharge.driver.journal import DriverJournal, Outcome
from evcharge.driver.requests_file import RequestLine
from evcharge.driver.screen import Screen
from evcharge.driver.settings import DriverSettings
from evcharge.errors import ConfigError
from evcharge.protocol.messages import ChargeRequest, RequestDenied, StopRequest, Ticket, encode
from evcharge.protocol.signing import PROOF_HEADER, driver_key, sign
from evcharge.protocol.topics import CODECS, TOPICS, Topic, dead_letter, route
from evcharge.runtime.faults import crash_point
from evcharge.runtime.inbox import Delivery, Inbox, Subscription
from evcharge.runtime.kafka import close_producer, new_producer
from evcharge.runtime.retry import LinkWatch, retry_until_done
from evcharge.runtime.waits import sleep_unless, wait_first

log = logging.getLogger("evcharge.driver")

EXIT_UNANSWERED = 3
# A stop waits this long for Kafka to acknowledge what the producer still holds.
PRODUCER_STOP_S = 5.0


class Driver:
    def __init__(self, settings: DriverSettings, screen: Screen | None = None) -> None:
        self.settings = settings
        self.screen = screen or Screen(settings.driver_id, json_lines=settings.json, events=settings.events)
        self.instance = uuid.uuid4().hex
        self._journal: DriverJournal | None = None
        self._producer: AIOKafkaProducer | None = None
        self._waiting: Waiting | None = None
        self._answer: asyncio.Future[Outcome] | None = None
        self._stop = asyncio.Event()
        self._plan = ""
        self.session: str | None = None  # the session in progress, for `stop`
        self._kafka_watch = LinkWatch(log, "Kafka", settings.kafka)
        self._revised = asyncio.Event()

    # ------------------------------------------------------------ setup

    async def run(self, stop: asyncio.Event, requests: list[RequestLine] | None, plan_name: str) -> int:
        s = self.settings
        await s.kafka_access.check()  # a broker we must not trust: one line, no retries
        lock_path = s.state_dir / f"driver-{s.driver_id}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = lock_path.open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigError(f"driver {s.driver_id} is already running (state dir {s.state_dir})") from None
        self._stop = stop
        self._journal = await DriverJournal.open(s.state_dir / f"driver-{s.driver_id}.sqlite")
        if requests is not None:
            self._plan = _plan_key(plan_name, requests)
            await self._expect_pending_answer()
        inbox = Inbox(
            bootstrap=s.kafka_access,
            group_id=f"driver-{s.driver_id}",
            subscriptions=[Subscription(Topic.DRIVER_UPDATES, key=s.driver_id)],
            codecs=CODECS,
            topics=TOPICS,
            handle=self._on_updates,
            dead_letter=self._dead_letter,
            partitions=s.partitions,
            new_group_starts_at_end=True,
            name=f"driver {s.driver_id}",
        )
        code = 0
        try:
            async with asyncio.TaskGroup() as tasks:
                consume = tasks.create_task(inbox.run(stop), name="updates inbox")
                await wait_first(inbox.ready, stop)
                if not stop.is_set():
                    self.screen.ready(s.kafka, self.instance)
                    if requests is not None:
                        code = await self._run_plan(stop, requests)
                    else:
                        await run_interactive(self, stop, s.central_url, s.tls.client_context())
                stop.set()
                await consume
        finally:
            if self._producer is not None:
                # A request still unacknowledged is in the journal, and is sent again at the next start.
                await close_producer(self._producer, flush=True, timeout_s=PRODUCER_STOP_S)
            await self._journal.close()
            self.screen.close()
            lock.close()
        return code

    async def _expect_pending_answer(self) -> None:
        """A request sent before a restart: be ready for its answer before reading any update."""
        assert self._journal is not None
        progress = await self._journal.progress(self._plan)
        if progress.pending_request_id is None or progress.pending_cp is None:
            return
        self._waiting = Waiting(progress.pending_request_id, progress.pending_cp, progress.next_index)
        self._answer = asyncio.get_running_loop().create_future()
        answered = await self._journal.answer_for(progress.pending_request_id, progress.next_index)
        if answered is not None:
            self._answer.set_result(answered)

    # ---------------------------------------------------------- sending

    async def send(self, message: ChargeRequest | StopRequest) -> None:
        """Publish one request, waiting out a Kafka outage (one calm line, then retries)."""
        topic, key = route(message)
        payload = encode(message)
        token = self.settings.token
        # The proof that this driver sent it: an HMAC of these exact bytes with its key.
        proof = [(PROOF_HEADER, sign(driver_key(token), payload))] if token else None
        await self._publish(topic, key, payload, proof)

    async def _publish(
        self, topic: str, key: str, payload: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        async def attempt() -> None:
            if self._producer is None:
                producer = new_producer(self.settings.kafka_access)
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            await self._producer.send_and_wait(topic, payload, key=key.encode(), headers=headers)

        await retry_until_done(attempt, watch=self._kafka_watch, stop=self._stop)

    async def request_charge(self, cp_id: str, index: int, request_id: str | None = None) -> Outcome | None:
        """Ask for a charge and wait for its outcome; None if the driver is stopping meanwhile."""
        assert self._journal is not None
        resent = request_id is not None
        request_id = request_id or uuid.uuid4().hex
        if self._waiting is None or self._waiting.request_id != request_id:
            self._waiting = Waiting(request_id, cp_id, index)
            self._answer = asyncio.get_running_loop().create_future()
        assert self._answer is not None
        if self._answer.done():
            return self._answer.result()  # answered while this driver was away
        await self._journal.begin_request(self._plan, index, request_id, cp_id)
        self.screen.requested(cp_id, request_id, index, resent)
        await self.send(ChargeRequest(driver_id=self.settings.driver_id, cp_id=cp_id, request_id=request_id))
        return await self._await_outcome(self._waiting, self._answer)

    async def stop_session(self) -> bool:
        if self.session is None:
            self.screen.say("no session in progress")
            return False
        await self.send(StopRequest(driver_id=self.settings.driver_id, session_id=self.session))
        self.screen.say(f"→ asked to stop session {self.session[:8]}")
        self.screen.event("stop_asked", session_id=self.session)
        return True

    async def _await_outcome(self, waiting: Waiting, answer: asyncio.Future[Outcome]) -> Outcome | None:
        """The request's outcome, or None when the driver is stopping (the answer will wait in Kafka)."""
        started = time.monotonic()
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                # Accepted: the charge itself may take long, and its ticket will come.
                timeout = self.settings.answer_timeout_s if waiting.session_id is None else 3600.0
                remaining = max(timeout - (time.monotonic() - started), 0.0)
                waiters: list[asyncio.Future[Any]] = [answer, stopping]
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if answer.done():
                    return answer.result()
                if stopping.done():
                    return None
                if waiting.session_id is None:
                    self.screen.no_answer(waiting.cp_id, waiting.request_id, timeout)
                    return Outcome(
                        waiting.request_id, waiting.index, waiting.cp_id, "no answer", None, None, None,
                        f"no answer within {timeout:g} s",
                    )  # fmt: skip
                started = time.monotonic()
        finally:
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping

    # --------------------------------------------------------- receiving

    async def _on_updates(self, deliveries: Sequence[Delivery[Any]]) -> None:
        for delivery in deliveries:
            await self._show(delivery.message)

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        consumer = f"driver-{self.settings.driver_id}"
        await self._publish(
            *dead_letter(
                record.topic, record.partition, record.offset, record.key, record.value, consumer, reason
            )
        )

    async def _show(self, update: Any) -> None:
        assert self._journal is not None
        heard = hear(self._waiting, update)
        if heard.kind is Kind.ACCEPTED:
            self.session = update.session_id
            self.screen.accepted(update)
        elif heard.kind is Kind.PROGRESS:
            self.session = update.session_id
            self.screen.progress(update)
        elif heard.kind is Kind.DENIED:
            assert isinstance(update, RequestDenied)
            index = self._waiting.index if heard.mine and self._waiting else -1
            outcome = Outcome(
                update.request_id, index, update.cp_id, "denied", None, None, None, update.reason
            )
            await self._answered(f"denied:{update.request_id}", outcome, lambda: self.screen.denied(update))
            self._resolve(heard.mine, outcome)
        else:
            assert isinstance(update, Ticket)
            if self.session == update.session_id:
                self.session = None
            index = self._waiting.index if heard.mine and self._waiting else -1
            outcome = Outcome(
                update.request_id,
                index,
                update.cp_id,
                update.end_reason.value,
                update.session_id,
                update.wh,
                update.micro_eur,
                "provisional"
                if update.provisional
                else ("revised by the meter" if update.revision > 1 else ""),
                update.revision,
                update.provisional,
            )
            late = not heard.mine and heard.kind is Kind.TICKET
            key = f"ticket:{update.session_id}:{update.revision}"
            await self._answered(key, outcome, lambda: self.screen.ticket(update, late=late))
            if heard.kind is Kind.REVISION:
                self._revised.set()
            self._resolve(heard.mine, outcome)

    async def _answered(self, key: str, outcome: Outcome, show: Any) -> None:
        """Show an answer once: shown first, then marked, so a crash between shows it again."""
        assert self._journal is not None
        if await self._journal.was_shown(key):
            return
        show()
        crash_point("driver.shown")
        await self._journal.mark_shown(key, outcome)

    def _resolve(self, mine: bool, outcome: Outcome) -> None:
        if mine and self._answer is not None and not self._answer.done():
            self._answer.set_result(outcome)

    # -------------------------------------------------------------- plan

    async def _run_plan(self, stop: asyncio.Event, requests: list[RequestLine]) -> int:
        assert self._journal is not None
        progress = await self._journal.progress(self._plan)
        if progress.next_index:
            self.screen.say(f"resuming at request {progress.next_index + 1} of {len(requests)}")
        for index in range(progress.next_index, len(requests)):
            if stop.is_set():
                return 0
            line = requests[index]
            resend = progress.pending_request_id if index == progress.next_index else None
            outcome = await self.request_charge(line.cp_id, index, request_id=resend)
            if outcome is None:
                self.screen.say("stopping: the answer will be waiting in Kafka at the next start")
                return 0
            await self._journal.finish_request(self._plan, outcome)
            self._waiting = None
            if index + 1 < len(requests) and await sleep_unless(stop, self.settings.interval_s):
                return 0
        await self._settle(stop)
        outcomes = await self._journal.outcomes(self._plan)
        self.screen.summary(outcomes, requests)
        return EXIT_UNANSWERED if any(o.outcome == "no answer" for o in outcomes) else 0

    async def _settle(self, stop: asyncio.Event) -> None:
        """Before leaving: give a provisional ticket the time to be confirmed by the CP's meter."""
        assert self._journal is not None
        pending = await self._journal.provisional(self._plan)
        if not pending:
            return
        self.screen.settling(pending, self.settings.settle_timeout_s)
        deadline = time.monotonic() + self.settings.settle_timeout_s
        while pending and not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._revised.clear()
            await wait_first(stop, self._revised, timeout_s=remaining)
            pending = await self._journal.provisional(self._plan)
        if pending:
            self.screen.unsettled(pending)


def _plan_key(name: str, requests: list[RequestLine]) -> str:
    """A requests file is resumed only if it is the same file with the same lines."""
    digest = hashlib.sha256("\n".join(r.cp_id for r in requests).encode()).hexdigest()[:12]
    return f"{name}:{digest}"
