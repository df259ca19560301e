"""A registered monitor's heartbeats, served from the transport's data callback: central's hottest path.

Ten thousand monitors each say "still here" every second, and almost every time
nothing changed. Such a heartbeat is decoded, checked and acknowledged inside
`data_received`: no task wakes up, no timer is armed, no lock is taken. A
heartbeat that does change something (the engine's health, its instance) goes
the slow way, through the service's commit, in a task of the link's own; the
heartbeats behind it wait their turn, so the acknowledgements keep their order.

The link has no read deadline of its own: a monitor that falls silent is closed
by the server's heartbeat watch, which is where the timeout is decided.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from evcharge.errors import Fenced, ProtocolError
from evcharge.protocol.framing import FrameDecoder, encode_frame
from evcharge.protocol.messages import TCP_FRAMES, Ack, ErrorReply, Frame, Heartbeat, encode
from evcharge.runtime.retry import describe, is_retriable

log = logging.getLogger("evcharge.central.tcp")

# Says whether a heartbeat changes nothing (then it is acknowledged at once).
Quick = Callable[[Heartbeat], bool]
# Carries out a heartbeat that changes something: decided again and committed.
Slow = Callable[[Heartbeat], Awaitable[None]]


class HeartbeatLink(asyncio.Protocol):
    """One registered monitor's connection, from its first heartbeat until it closes.

    `run()` returns why the link ended ("connection closed", "protocol error", ...),
    or raises what the slow path could not handle.
    """

    def __init__(
        self,
        cp_id: str,
        peer: str,
        *,
        quick: Quick,
        slow: Slow,
        heard: Callable[[], None],
        on_lost: Callable[[Exception | None], None] = lambda exc: None,
    ) -> None:
        self.cp_id = cp_id
        self._peer = peer
        self._quick = quick
        self._slow = slow
        self._heard = heard
        # Told when the socket is gone: the stream this connection began as waits for it too.
        self._on_lost = on_lost
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[Heartbeat] = deque()  # behind one that changes something, in order
        self._worker: asyncio.Task[None] | None = None
        self._ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        # run() raises a failure; one that comes after run() was cancelled is not reported twice.
        self._ended.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.heartbeats = 0

    def attach(self, transport: asyncio.Transport, already_read: bytes, *, ended: bool = False) -> None:
        """Take over `transport`; `already_read` is what arrived before, still to be handled, and
        `ended` says the peer had already closed its side (or the socket is gone): the transport
        will not say so again to its new protocol."""
        self._transport = transport
        transport.set_protocol(self)
        # The stream may have paused reading on a full buffer; this protocol keeps nothing back.
        if not transport.is_closing():
            transport.resume_reading()
        if already_read:
            self.data_received(already_read)
        if ended or transport.is_closing():
            self._end("connection closed")

    async def run(self) -> str:
        try:
            return await asyncio.shield(self._ended)
        finally:
            if self._worker is not None and not self._worker.done():
                self._worker.cancel()
                await asyncio.gather(self._worker, return_exceptions=True)

    # ------------------------------------------------------------ transport

    def data_received(self, data: bytes) -> None:
        if self._ended.done():
            return
        try:
            payloads = self._decoder.feed(data)
            for payload in payloads:
                self._frame(TCP_FRAMES.decode(payload))
        except ProtocolError as exc:
            log.warning("monitor %s (%s): %s: closed", self._peer, self.cp_id, exc)
            self._end("protocol error")
        except Exception as exc:
            # A fault of central's own: raised from run(), not swallowed by the transport.
            self._fail(exc)

    def eof_received(self) -> bool:
        self._end("connection closed")
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._end("connection lost" if exc is not None else "connection closed")
        self._on_lost(exc)

    # -------------------------------------------------------------- frames

    def _frame(self, frame: Frame) -> None:
        if not (isinstance(frame, Heartbeat) and frame.cp_id == self.cp_id):
            log.warning(
                "monitor %s (%s) sent an unexpected %s: closed", self._peer, self.cp_id, type(frame).__name__
            )
            self._write(
                ErrorReply(corr=frame.corr, code="unexpected", reason="only heartbeats after registering")
            )
            self._end("protocol violation")
            return
        self._heard()
        self.heartbeats += 1
        if not self._waiting and self._quick(frame):
            self._write(Ack(corr=frame.corr))
            return
        self._waiting.append(frame)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._work_off(), name=f"heartbeats of {self.cp_id}"
            )

    async def _work_off(self) -> None:
        """The heartbeats that change something, and those that arrived behind them, in order."""
        try:
            while self._waiting and not self._ended.done():
                frame = self._waiting[0]
                try:
                    await self._slow(frame)
                except Fenced:
                    self._end("this central lost the lead")
                    return
                except Exception as exc:
                    if not is_retriable(exc):
                        self._fail(exc)
                        return
                    # Nothing changed in memory: the next heartbeat tries the same change again.
                    log.debug("%s: heartbeat change waits for the store: %s", self.cp_id, describe(exc))
                self._waiting.popleft()
                self._write(Ack(corr=frame.corr))
        finally:
            self._worker = None

    def _write(self, frame: Frame) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(encode_frame(encode(frame)))

    def _end(self, why: str) -> None:
        if not self._ended.done():
            self._ended.set_result(why)
        if self._transport is not None:
            self._transport.close()

    def _fail(self, exc: BaseException) -> None:
        if not self._ended.done():
            self._ended.set_exception(exc)
        if self._transport is not None:
            self._transport.close()
