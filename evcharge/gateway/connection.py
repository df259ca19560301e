"""One charger's WebSocket as OCPP-J calls: its calls handed to a handler, ours answered by it.

`OcppConnection` owns the socket. Its reader never waits for a handler: each
call the charger makes runs in its own task (owned, cancelled and awaited when
the connection ends), so a transaction message waiting for Kafka never holds up
the answer to a call of ours. A frame that cannot be used gets the CallError the
wire core chose, is reported (dead letter, metrics) and the connection stays up.
Our own calls go one at a time, as OCPP asks, each with a deadline; when the
connection dies every pending call fails with `ConnectionLost` and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from evcharge.errors import ConnectionLost
from evcharge.gateway import wire
from evcharge.gateway.metrics import Metrics
from evcharge.gateway.wire import CallIn, ErrorCode, ErrorIn, ResultIn, Unusable, Version

log = logging.getLogger("evcharge.gateway")


class CallRefused(Exception):
    """The charger answered our call with a CallError."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class Reply(Exception):
    """Raised by a handler to answer with a CallError instead of a result."""

    def __init__(self, code: ErrorCode, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class NoAnswer(Exception):
    """Raised by a handler that must leave the call unanswered (the charger will retry it)."""


@dataclass(frozen=True)
class Answer:
    """A handler's result, and what to do once the charger has it (a call of ours that must follow)."""

    payload: dict[str, Any]
    then: Callable[[], Awaitable[None]] | None = None


class CallHandler(Protocol):
    async def __call__(self, call: CallIn, frame: str) -> Answer: ...


Report = Callable[
    [str, str, str], Coroutine[Any, Any, None]
]  # (frame, reason, action) -> record a dead letter


class OcppConnection:
    def __init__(
        self,
        socket: ServerConnection,
        cp_id: str,
        version: Version,
        *,
        metrics: Metrics,
        lenient: bool,
        report: Report,
        call_timeout_s: float,
        arrived: int = 0,
    ) -> None:
        self.socket = socket
        self.cp_id = cp_id
        self.version = version
        self.id = uuid.uuid4().hex[:12]
        self.arrived = arrived  # the order its handshake came in: the newest connection wins
        self._metrics = metrics
        self._lenient = lenient
        self._report = report
        self._call_timeout_s = call_timeout_s
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._call_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self.close_reason = ""
        self.closed = asyncio.Event()
        self._unusable = 0

    async def serve(self, handle: CallHandler) -> str:
        """Read until the socket closes; the reason it closed."""
        reason = "closed by the charger"
        try:
            async for text in self.socket:
                self._receive(text, handle)
        except ConnectionClosed as exc:
            reason = _closed_reason(exc)
        else:
            reason = _closed_reason(None, self.socket)
        finally:
            await self._shut(self.close_reason or reason)
        return self.close_reason

    def _receive(self, text: str | bytes, handle: CallHandler) -> None:
        frame = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
        message = wire.parse(frame, self.version, lenient=self._lenient)
        if isinstance(message, CallIn):
            self._metrics.message(message.action, self.version)
            if message.tolerated:
                log.debug("%s %s: tolerated %s", self.cp_id, message.action, "; ".join(message.tolerated))
            self._spawn(self._answer(message, frame, handle))
        elif isinstance(message, (ResultIn, ErrorIn)):
            waiter = self._pending.get(message.unique_id)
            if waiter is None or waiter.done():
                self._spawn(self._report(frame, f"a result for no call of ours ({message.unique_id})", ""))
            elif isinstance(message, ResultIn):
                waiter.set_result(message.payload)
            else:
                waiter.set_exception(CallRefused(message.code, message.description))
        else:
            self._spawn(self._refuse(message, frame))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("%s: a call handler failed: %r", self.cp_id, exc, exc_info=exc)

    async def _refuse(self, message: Unusable, frame: str) -> None:
        # The first one is worth a warning; the rest of them are counted and dead-lettered.
        self._unusable += 1
        (log.warning if self._unusable == 1 else log.debug)(
            "%s sent an unusable frame (%s): %s%s",
            self.cp_id,
            message.code.value,
            message.reason,
            "; further ones are only counted and kept as dead letters" if self._unusable == 1 else "",
        )
        self._metrics.call_error(message.code.spelling(self.version))
        if message.action:
            self._metrics.message(message.action, self.version)
        if message.reply is not None:
            await self._send(message.reply)
        await self._report(frame, message.reason, message.action)

    async def _answer(self, call: CallIn, frame: str, handle: CallHandler) -> None:
        started = time.monotonic()
        try:
            answer = await handle(call, frame)
        except Reply as exc:
            self._metrics.call_error(exc.code.spelling(self.version))
            await self._send(wire.call_error(call.unique_id, exc.code, exc.description, self.version))
            return
        except NoAnswer:
            return
        finally:
            self._metrics.observe(call.action, time.monotonic() - started)
        await self._send(wire.call_result(call.unique_id, answer.payload))
        if answer.then is not None:
            await answer.then()

    async def _send(self, text: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.socket.send(text)

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one call and return the charger's result; CallRefused, TimeoutError, ConnectionLost."""
        finding = wire.validate(self.version, action, payload, request=True)
        assert not isinstance(finding, Unusable), f"our own {action} is invalid: {finding.reason}"
        async with self._call_lock:
            if self.closed.is_set():
                raise ConnectionLost(self.close_reason or "the charger is not connected")
            unique_id = f"gw-{self.id}-{next(self._ids)}"
            waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._pending[unique_id] = waiter
            try:
                async with asyncio.timeout(self._call_timeout_s):
                    await self.socket.send(wire.call(unique_id, action, payload))
                    return await waiter
            except ConnectionClosed as exc:
                raise ConnectionLost(_closed_reason(exc)) from exc
            finally:
                self._pending.pop(unique_id, None)
                if waiter.done() and not waiter.cancelled():
                    waiter.exception()  # seen, even by a call cancelled as the connection died

    async def close(self, reason: str, code: int = 1000) -> None:
        """Idempotent: close the socket with `reason` and end every call in flight."""
        if not self.close_reason:
            self.close_reason = reason
        with contextlib.suppress(Exception):
            await self.socket.close(code, reason[:120])
        await self._shut(reason)

    async def _shut(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = self.close_reason or reason
        self.closed.set()
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(ConnectionLost(self.close_reason))
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _closed_reason(exc: ConnectionClosed | None, socket: ServerConnection | None = None) -> str:
    if exc is not None and exc.rcvd is not None:
        received = f"{exc.rcvd.code}{': ' + exc.rcvd.reason if exc.rcvd.reason else ''}"
        return f"closed by the charger ({received})"
    if exc is not None and exc.sent is not None and exc.sent.code == 1011:
        return "no pong within the ping timeout"
    if socket is not None and socket.close_code is not None:
        return f"closed ({socket.close_code}{': ' + socket.close_reason if socket.close_reason else ''})"
    return "connection lost"
