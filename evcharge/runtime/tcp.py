"""Framed, typed TCP connections with request/response correlation and deadlines.

`FramedConnection` owns one stream: a reader task decodes frames, hands replies
to the request that waits for them (by `corr`) and everything else to an
optional `on_message` callback. When the connection dies every waiting request
fails with `ConnectionLost` carrying the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

import msgspec

from evcharge.errors import ConnectionLost, ProtocolError, Refused, RequestTimeout
from evcharge.protocol.framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode_frame
from evcharge.protocol.messages import TCP_FRAMES, ErrorReply, Frame, encode
from evcharge.runtime.tls import TlsRefused, is_refusal, refusal_text

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 16 * 1024
TLS_HANDSHAKE_S = 5.0
LISTEN_BACKLOG = 1024  # central's monitor port takes thousands of chargers reconnecting at once


def peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


class FrameReader:
    """Reads whole typed frames from a stream, one at a time, with a deadline per frame."""

    def __init__(self, reader: asyncio.StreamReader, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._reader = reader
        self._decoder = FrameDecoder(max_frame_bytes)
        self._ready: list[bytes] = []

    async def read(self, timeout_s: float | None) -> Frame | None:
        """The next frame, or None at a clean EOF. ProtocolError on garbage or a cut frame."""
        if timeout_s is None:  # a connection's reader loop: no deadline object per frame
            return await self._next()
        async with asyncio.timeout(timeout_s):
            return await self._next()

    async def _next(self) -> Frame | None:
        while not self._ready:
            chunk = await self._reader.read(READ_CHUNK_BYTES)
            if not chunk:
                if self._decoder.pending_bytes:
                    raise ProtocolError(
                        f"connection closed in the middle of a frame "
                        f"({self._decoder.pending_bytes} bytes pending)"
                    )
                return None
            self._ready.extend(self._decoder.feed(chunk))
        payload = self._ready.pop(0)
        return TCP_FRAMES.decode(payload)

    def detach(self) -> bytes:
        """Every byte received and not handed out as a frame yet, in order, for a protocol that takes
        the connection over (`transport.set_protocol`): frames decoded but not read, the decoder's
        partial frame, and what the stream itself buffered."""
        unread = b"".join(encode_frame(p, self._decoder.max_frame_bytes) for p in self._ready)
        self._ready.clear()
        unread += self._decoder.take_pending()
        # StreamReader has no public way to take its buffer without awaiting more data.
        buffered: bytearray = self._reader._buffer  # type: ignore[attr-defined]
        unread += bytes(buffered)
        buffered.clear()
        return unread

    @property
    def ended(self) -> bool:
        """The peer closed its side, or the connection failed: nothing more will arrive."""
        return self._reader.at_eof() or self._reader.exception() is not None


async def send_frame(writer: asyncio.StreamWriter, frame: msgspec.Struct) -> None:
    writer.write(encode_frame(encode(frame)))
    await writer.drain()


class FramedConnection:
    """A client connection: `request()` sends a frame and awaits the frame that answers it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        on_message: Callable[[Frame], Awaitable[None]] | None = None,
    ) -> None:
        self._frames = FrameReader(reader)
        self._writer = writer
        self._on_message = on_message
        self._corr = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._closed = asyncio.Event()
        self.close_reason = ""
        self._reader_task = asyncio.create_task(self._read_loop(), name=f"read {self.peer}")

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        timeout_s: float,
        on_message: Callable[[Frame], Awaitable[None]] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> FramedConnection:
        """Connect (over TLS, checking the server's certificate and name, with `tls`).

        A certificate either side refuses is `TlsRefused`: no retry will change it.
        """
        try:
            async with asyncio.timeout(timeout_s):
                if tls is None:
                    reader, writer = await asyncio.open_connection(host, port)
                else:
                    reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=host)
        except (ssl.SSLError, OSError) as exc:
            if is_refusal(exc):
                raise TlsRefused(refusal_text(exc, f"{host}:{port}")) from None
            raise
        return cls(reader, writer, on_message=on_message)

    @property
    def peer(self) -> str:
        return peer_name(self._writer)

    @property
    def closed_event(self) -> asyncio.Event:
        return self._closed

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def request(self, frame: Frame, *, timeout_s: float) -> Frame:
        if self.closed:
            raise ConnectionLost(self.close_reason or "connection is closed")
        frame.corr = next(self._corr)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Frame] = loop.create_future()
        self._pending[frame.corr] = waiter
        # The deadline fails the waiter rather than cancel this task (`asyncio.timeout`): a
        # monitor asks twice a second, and the cancellation machinery cost more than the asking.
        deadline = loop.call_later(timeout_s, self._expire, waiter, timeout_s)
        try:
            self._writer.write(encode_frame(encode(frame)))
            if self._writer.transport.get_write_buffer_size():  # the peer is slow to read: wait
                async with asyncio.timeout(timeout_s):
                    await self._writer.drain()
            reply = await waiter
        except TimeoutError:
            raise self._no_answer(timeout_s) from None
        except (ConnectionError, OSError) as exc:
            await self._shut(f"send failed: {exc}")
            raise ConnectionLost(self.close_reason) from exc
        finally:
            deadline.cancel()
            self._pending.pop(frame.corr, None)
        if isinstance(reply, ErrorReply):
            raise Refused(reply.code, reply.reason, leader=reply.leader or None)
        return reply

    def _expire(self, waiter: asyncio.Future[Frame], timeout_s: float) -> None:
        if not waiter.done():
            waiter.set_exception(self._no_answer(timeout_s))

    def _no_answer(self, timeout_s: float) -> RequestTimeout:
        return RequestTimeout(f"{self.peer} did not answer within {timeout_s:g} s")

    async def _read_loop(self) -> None:
        reason = "closed by peer"
        try:
            while True:
                frame = await self._frames.read(timeout_s=None)
                if frame is None:
                    break
                waiter = self._pending.get(frame.corr) if frame.corr else None
                if waiter is not None and not waiter.done():
                    waiter.set_result(frame)
                elif self._on_message is not None:
                    await self._on_message(frame)
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc.__class__.__name__}"
        except asyncio.CancelledError:
            reason = "closed"
        await self._shut(reason)

    async def _shut(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self.close_reason = reason
        self._closed.set()
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(ConnectionLost(reason))
        self._pending.clear()
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    async def close(self) -> None:
        """Idempotent: cancels the reader and closes the socket."""
        if self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        await self._shut("closed")


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class OwnedServer:
    """A TCP server whose connection handlers are owned: on close they are cancelled and awaited.

    Python 3.11's `Server.wait_closed()` does not wait for open connections, and a
    handler task cancelled by `asyncio.run` at exit is reported with a traceback;
    owning the tasks makes shutdown quiet and ordered.
    """

    def __init__(
        self,
        handler: Handler,
        name: str,
        *,
        tls: ssl.SSLContext | None = None,
        on_tls_refused: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self._handler = handler
        self._name = name
        # With TLS, each accepted socket's own task takes it up, so a failed handshake is
        # seen (and told to `on_tls_refused`) instead of vanishing inside the event loop.
        self._tls = tls
        self._on_tls_refused = on_tls_refused
        self._server: asyncio.Server | None = None
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        if self._tls is None:
            self._server = await asyncio.start_server(self._serve, host, port)
            self.port = self._server.sockets[0].getsockname()[1]
            return self.port
        # Not `start_server` then `start_tls`: uvloop reads a new connection at once, and a
        # ClientHello read before `start_tls` is lost to the handshake, which then waits for
        # it until the client gives up (seen with monitors reconnecting to a central just
        # restarted). Accepted here, a socket's first byte is read by TLS.
        loop = asyncio.get_running_loop()
        family, kind, proto, _, address = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0]
        listener = socket.socket(family, kind, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accepting = asyncio.create_task(self._accept(listener), name=f"{self._name} accept")
        return self.port

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors, say: a later accept may work
                log.warning("%s: cannot accept a connection (%s)", self._name, exc)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._serve_tls(sock))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._handler(reader, writer)
        except asyncio.CancelledError:
            pass  # closing: the connection ends here, quietly
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_tls(self, sock: socket.socket) -> None:
        try:
            streams = await self._handshake(sock)
        except asyncio.CancelledError:
            sock.close()
            return
        if streams is not None:
            await self._serve(*streams)

    async def _handshake(
        self, sock: socket.socket
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        assert self._tls is not None
        loop = asyncio.get_running_loop()
        try:
            host, port = sock.getpeername()[:2]
        except OSError:
            sock.close()
            return None  # gone before it was served
        peer = f"{host}:{port}"
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            async with asyncio.timeout(TLS_HANDSHAKE_S):
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, sock, ssl=self._tls, ssl_handshake_timeout=TLS_HANDSHAKE_S
                )
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            sock.close()
            # A client that does not trust our certificate just hangs up (Python's does, with
            # no alert): from here that is a reset, so every unfinished handshake is told.
            if self._on_tls_refused is not None:
                self._on_tls_refused(peer, exc)
            else:
                log.debug("%s: TLS handshake with %s did not finish: %r", self._name, peer, exc)
            return None
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def close(self) -> None:
        """Idempotent: stop accepting, then end every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
