"""`evcharge driver`: sends charge requests, shows every step live, keeps each ticket once.

Reads only its own updates: the one partition its id maps to, with its own
group for committed offsets, so a restarted driver is handed what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from rich.console import Console
from rich.table import Table

from evcharge.driver.journal import DriverJournal, Outcome
from evcharge.driver.requests_file import RequestLine
from evcharge.errors import ConfigError, ProtocolError
from evcharge.messages import (
    ChargeRequest,
    ChargingProgress,
    DriverUpdate,
    RequestAccepted,
    RequestDenied,
    StopRequest,
    Ticket,
    decode,
    encode,
)
from evcharge.runtime.consumer import ConsumerLoop, dead_letter
from evcharge.runtime.kafka import (
    TOPICS,
    ensure_topics,
    key_partition,
    new_producer,
)
from evcharge.runtime.reconnect import LinkWatch, retry_until_done
from evcharge.runtime.waits import sleep_unless, wait_first

log = logging.getLogger("evcharge.driver")


@dataclass(frozen=True)
class DriverSettings:
    driver_id: str
    kafka: str
    state_dir: Path
    interval_s: float = 4.0
    answer_timeout_s: float = 90.0
    partitions: int = 8
    central_url: str = "http://127.0.0.1:8000"


@dataclass
class _Waiting:
    """The request this driver is waiting on, and what has been heard of it so far."""

    request_id: str
    cp_id: str
    done: asyncio.Future[Outcome]
    index: int
    session_id: str | None = None


class Driver:
    def __init__(self, settings: DriverSettings, console: Console | None = None) -> None:
        self.settings = settings
        self.console = console or Console(highlight=False, soft_wrap=True)
        self._journal: DriverJournal | None = None
        self._producer: AIOKafkaProducer | None = None
        self._waiting: _Waiting | None = None
        self._stop = asyncio.Event()
        self._plan = ""
        self._session: str | None = None
        self._kafka_watch = LinkWatch(log, "Kafka", settings.kafka)
        self.central_url = settings.central_url

    # ------------------------------------------------------------ setup

    async def run(self, stop: asyncio.Event, requests: list[RequestLine] | None, plan_name: str) -> int:
        s = self.settings
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
        self._producer = None
        if requests is not None:
            self._plan = _plan_key(plan_name, requests)
            await self._expect_pending_answer()
        consumer = ConsumerLoop(
            s.kafka,
            f"driver-{s.driver_id}",
            self._assign,
            self._on_updates,
            new_group_starts_at_end=True,
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                consume_task = tasks.create_task(consumer.run(stop), name="updates consumer")
                await wait_first(consumer.ready, stop)
                if not stop.is_set():
                    self.console.print(f"[bold]{s.driver_id}[/] ready (Kafka {s.kafka})")
                    if requests is not None:
                        await self._run_plan(stop, requests)
                    else:
                        from evcharge.driver.interactive import run_interactive

                        await run_interactive(self, stop)
                stop.set()
                await consume_task
        finally:
            if self._producer is not None:
                await self._producer.stop()
            await self._journal.close()
            lock.close()
        return 0

    async def _expect_pending_answer(self) -> None:
        """A request sent before a restart: be ready for its answer before reading any update."""
        assert self._journal is not None
        progress = await self._journal.progress(self._plan)
        if progress.pending_request_id is None or progress.pending_cp is None:
            return
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting = _Waiting(progress.pending_request_id, progress.pending_cp, done, progress.next_index)
        answered = await self._journal.answer_for(progress.pending_request_id, progress.next_index)
        if answered is not None:
            done.set_result(answered)

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        counts = await ensure_topics(self.settings.kafka, self.settings.partitions)
        tp = key_partition(counts, TOPICS.driver_updates, self.settings.driver_id)
        return [tp]

    # ---------------------------------------------------------- sending

    async def send(self, message: ChargeRequest | StopRequest) -> None:
        await self._publish(TOPICS.driver_requests, self.settings.driver_id, encode(message))

    async def _publish(self, topic: str, key: str, payload: bytes) -> None:
        """Publish one record, waiting out a Kafka outage (one calm line, then retries)."""

        async def attempt() -> None:
            if self._producer is None:
                producer = new_producer(self.settings.kafka)
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            await self._producer.send_and_wait(topic, payload, key=key.encode())

        await retry_until_done(attempt, watch=self._kafka_watch)

    async def request_charge(self, cp_id: str, index: int, request_id: str | None = None) -> Outcome | None:
        assert self._journal is not None
        request_id = request_id or uuid.uuid4().hex
        waiting = self._waiting
        if waiting is None or waiting.request_id != request_id:
            waiting = self._waiting = _Waiting(
                request_id, cp_id, asyncio.get_running_loop().create_future(), index
            )
        if waiting.done.done():
            return waiting.done.result()  # answered while this driver was away
        await self._journal.begin_request(self._plan, index, request_id, cp_id)
        self.console.print(f"→ requesting a charge at [bold]{cp_id}[/]")
        await self.send(ChargeRequest(driver_id=self.settings.driver_id, cp_id=cp_id, request_id=request_id))
        return await self._await_outcome(waiting)

    async def stop_session(self) -> bool:
        if self._session is None:
            self.console.print("no session in progress")
            return False
        await self.send(StopRequest(driver_id=self.settings.driver_id, session_id=self._session))
        self.console.print(f"→ asked to stop session {self._session[:8]}")
        return True

    async def _await_outcome(self, waiting: _Waiting) -> Outcome | None:
        """The request's outcome, or None when the driver is stopping (the answer will wait in Kafka)."""
        started = time.monotonic()
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                timeout = self.settings.answer_timeout_s if waiting.session_id is None else 3600.0
                remaining = max(timeout - (time.monotonic() - started), 0.0)
                await asyncio.wait(
                    [waiting.done, stopping], timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if waiting.done.done():
                    return waiting.done.result()
                if stopping.done():
                    return None
                if waiting.session_id is None:
                    return Outcome(
                        waiting.request_id,
                        waiting.index,
                        waiting.cp_id,
                        "no answer",
                        None,
                        None,
                        None,
                        f"no answer within {timeout:g} s",
                    )
                started = time.monotonic()  # accepted: the charge itself may take long
        finally:
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping

    # --------------------------------------------------------- receiving

    async def _on_updates(self, records: list[ConsumerRecord]) -> None:
        for record in records:
            if record.key != self.settings.driver_id.encode():
                continue  # another driver whose id maps to the same partition
            try:
                update = decode(record.value, DriverUpdate)
            except ProtocolError as exc:
                await self._publish(*dead_letter(record, f"driver-{self.settings.driver_id}", str(exc)))
                continue
            await self._show(update)  # type: ignore[arg-type]

    async def _show(self, update: RequestAccepted | RequestDenied | ChargingProgress | Ticket) -> None:
        assert self._journal is not None
        waiting = self._waiting
        if isinstance(update, RequestAccepted):
            if waiting is not None and update.request_id == waiting.request_id:
                waiting.session_id = update.session_id
            self._session = update.session_id
            self.console.print(
                f"✔ accepted: [bold]{update.cp_id}[/] session {update.session_id} "
                f"at {update.price_eur_kwh:.2f} EUR/kWh"
            )
        elif isinstance(update, ChargingProgress):
            self._session = update.session_id
            if update.seq == 0:
                self.console.print(f"⚡ charging at {update.cp_id} (session {update.session_id[:8]})")
            else:
                self.console.print(
                    f"⚡ {update.cp_id}: {update.kw:.1f} kW  {update.kwh:.4f} kWh  {update.eur:.4f} EUR"
                )
        elif isinstance(update, RequestDenied):
            outcome = Outcome(
                update.request_id,
                waiting.index if waiting else -1,
                update.cp_id,
                "denied",
                None,
                None,
                None,
                update.reason,
            )
            if await self._journal.record_answer(f"denied:{update.request_id}:{update.id}", outcome):
                self.console.print(
                    f"✘ denied: {update.cp_id or 'request'}: {update.reason} [{update.code.value}]"
                )
            self._resolve(update.request_id, outcome)
        else:
            outcome = Outcome(
                update.request_id,
                waiting.index if waiting else -1,
                update.cp_id,
                update.end_reason.value,
                update.session_id,
                update.kwh,
                update.eur,
                "",
            )
            if self._session == update.session_id:
                self._session = None
            if await self._journal.record_answer(f"ticket:{update.session_id}", outcome):
                late = "" if waiting and update.request_id == waiting.request_id else " (missed while away)"
                self.console.print(
                    f"🎫 ticket{late} cp={update.cp_id} session={update.session_id} "
                    f"kwh={update.kwh:.5f} eur={update.eur:.4f} ended={update.end_reason.value}"
                )
            self._resolve(update.request_id, outcome)

    def _resolve(self, request_id: str, outcome: Outcome) -> None:
        waiting = self._waiting
        if waiting is not None and waiting.request_id == request_id and not waiting.done.done():
            waiting.done.set_result(outcome)

    # -------------------------------------------------------------- plan

    async def _run_plan(self, stop: asyncio.Event, requests: list[RequestLine]) -> None:
        assert self._journal is not None
        progress = await self._journal.progress(self._plan)
        if progress.next_index:
            self.console.print(f"resuming at request {progress.next_index + 1} of {len(requests)}")
        for index in range(progress.next_index, len(requests)):
            if stop.is_set():
                return
            line = requests[index]
            resend = progress.pending_request_id if index == progress.next_index else None
            if resend:
                self.console.print(
                    f"waiting for the answer to request {index + 1} ({line.cp_id}) sent before a restart"
                )
            outcome = await self.request_charge(line.cp_id, index, request_id=resend)
            if outcome is None:
                self.console.print("stopping: the answer will be waiting in Kafka at the next start")
                return
            await self._journal.finish_request(self._plan, outcome)
            self._waiting = None
            if index + 1 < len(requests) and await sleep_unless(stop, self.settings.interval_s):
                return
        self._print_summary(await self._journal.outcomes(self._plan), requests)

    def _print_summary(self, outcomes: list[Outcome], requests: list[RequestLine]) -> None:
        table = Table(title=f"{self.settings.driver_id}: {len(outcomes)} requests")
        for column in ("#", "line", "CP", "outcome", "kWh", "EUR", "detail"):
            table.add_column(column)
        for o in outcomes:
            table.add_row(
                str(o.idx + 1),
                str(requests[o.idx].number) if o.idx < len(requests) else "?",
                o.cp_id,
                o.outcome,
                f"{o.kwh:.4f}" if o.kwh is not None else "",
                f"{o.eur:.4f}" if o.eur is not None else "",
                o.detail,
            )
        self.console.print(table)
        total_kwh = sum(o.kwh or 0 for o in outcomes)
        total_eur = sum(o.eur or 0 for o in outcomes)
        self.console.print(f"summary: {len(outcomes)} requests, {total_kwh:.4f} kWh, {total_eur:.4f} EUR")


def _plan_key(name: str, requests: list[RequestLine]) -> str:
    """A requests file is resumed only if it is the same file with the same lines."""
    digest = hashlib.sha256("\n".join(r.cp_id for r in requests).encode()).hexdigest()[:12]
    return f"{name}:{digest}"
