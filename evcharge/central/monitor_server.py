"""Central's TCP endpoint for monitors: register, then heartbeats carrying the engine's health.

One task per connection. The first frame must be a registration; anything
else, garbage, or silence past the deadline closes that connection with a
logged reason and touches nothing else. Once registered, the connection's
heartbeats are served by `evcharge.central.heartbeats` straight from the
socket. A monitor that stops talking (hung, or cut off by the network) is
dropped after the heartbeat timeout by one watch over every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from evcharge.central import facts
from evcharge.central.heartbeats import HeartbeatLink
from evcharge.central.service import CentralService
from evcharge.errors import Fenced, ProtocolError, Refused
from evcharge.protocol.messages import ErrorReply, Register, Registered
from evcharge.runtime.retry import describe, is_retriable
from evcharge.runtime.tcp import FrameReader, OwnedServer, peer_name, send_frame
from evcharge.runtime.waits import sleep_unless

log = logging.getLogger("evcharge.central.tcp")

REGISTER_DEADLINE_S = 5.0
WATCH_INTERVAL_S = 0.25


@dataclass
class _Connection:
    cp_id: str
    instance: str
    peer: str
    close: Callable[[str], None]
    last_heartbeat: float = field(default_factory=time.monotonic)


class MonitorServer:
    def __init__(
        self,
        service: CentralService,
        host: str,
        port: int,
        *,
        heartbeat_timeout_s: float,
        instance: str = "",
        leader_hint: Callable[[], Refused | None] = lambda: None,
        counts: Counter[str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._service = service
        self.host = host
        self.port = port
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._instance = instance
        # A standby answers "not the leader, try X" instead of registering anyone.
        self._leader_hint = leader_hint
        self._server = OwnedServer(self._serve, "monitors", tls=tls, on_tls_refused=self._tls_refused)
        self.tls = tls is not None
        self._connections: dict[str, _Connection] = {}
        # `/health`'s counters: "heartbeats" is how the bench knows what central's CPU paid for.
        self._counts: Counter[str] = counts if counts is not None else Counter()

    async def start(self) -> None:
        self.port = await self._server.start(self.host, self.port)
        log.info("listening for monitors on %s:%d%s", self.host, self.port, " (TLS)" if self.tls else "")

    def _tls_refused(self, peer: str, exc: BaseException) -> None:
        if isinstance(exc, ssl.SSLError):
            reason = str(exc.reason or exc)  # it showed a certificate we do not accept
        elif isinstance(exc, TimeoutError):
            reason = "no handshake within the deadline"
        else:
            reason = "it hung up during the handshake: it may not trust this central's certificate"
        log.warning("monitor %s: TLS handshake did not finish (%s): closed", peer, reason)
        self._service.tell(facts.TlsRefused(peer, reason))

    async def close(self) -> None:
        """Stop accepting, then drop every monitor connection (they reconnect to the next central)."""
        await self._server.close()

    def drop_all(self, why: str) -> None:
        """Close every monitor link (this central stops leading: the monitors go to the one that does)."""
        for connection in list(self._connections.values()):
            connection.close(why)

    async def watch_heartbeats(self, stop: asyncio.Event) -> None:
        """A monitor that is hung keeps its socket open: silence past the timeout drops it."""
        while not await sleep_unless(stop, WATCH_INTERVAL_S):
            deadline = time.monotonic() - self.heartbeat_timeout_s
            for connection in [c for c in self._connections.values() if c.last_heartbeat < deadline]:
                connection.close(f"no heartbeat for {self.heartbeat_timeout_s:g} s")
                self._counts["heartbeat_timeouts"] += 1  # a CP dropped for a late heartbeat
                await self._left(connection, "no heartbeat")

    async def _left(self, connection: _Connection, why: str) -> None:
        if self._connections.get(connection.cp_id) is not connection:
            return  # replaced by a newer connection of the same monitor, which keeps the CP
        del self._connections[connection.cp_id]
        await self._service.monitor_left(connection.cp_id, connection.instance, why, peer=connection.peer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = peer_name(writer)
        frames = FrameReader(reader)
        try:
            first = await frames.read(timeout_s=REGISTER_DEADLINE_S)
        except TimeoutError:
            log.warning("monitor %s sent no registration within %g s: closed", peer, REGISTER_DEADLINE_S)
            return
        except ProtocolError as exc:
            log.warning("monitor %s: %s: closed", peer, exc)
            await _reply_error(writer, 0, "protocol_error", str(exc))
            return
        except (ConnectionError, OSError):
            return
        if first is None:
            return
        if not isinstance(first, Register):
            log.warning("monitor %s sent %s before registering: closed", peer, type(first).__name__)
            await _reply_error(writer, first.corr, "not_registered", "register before anything else")
            return
        await self._serve_registered(first, frames, writer, peer)

    async def _serve_registered(
        self, first: Register, frames: FrameReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        not_leader = self._leader_hint()
        if not_leader is not None:
            await _reply_error(
                writer, first.corr, not_leader.code, not_leader.reason, not_leader.leader or ""
            )
            return
        try:
            engine_key = await self._service.register(first, peer)
        except Refused as exc:
            await _reply_error(writer, first.corr, exc.code, exc.reason)
            return
        except Fenced:
            # The lead moved while this registration was being decided: send the monitor on.
            hint = self._leader_hint() or Refused("not_leader", "this central just lost the lead")
            await _reply_error(writer, first.corr, hint.code, hint.reason, hint.leader or "")
            return
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning("%s: cannot register it now (%s)", first.cp_id, describe(exc))
            await _reply_error(
                writer, first.corr, "unavailable", f"central cannot record right now: {describe(exc)}"
            )
            return
        closed_by_central: list[str] = []

        def close(reason: str) -> None:
            closed_by_central.append(reason)
            writer.close()

        connection = _Connection(first.cp_id, first.instance, peer, close)
        replaced = self._connections.get(first.cp_id)
        self._connections[first.cp_id] = connection
        if replaced is not None:
            replaced.close("replaced by a reconnect of the same monitor")
        why = "connection closed"
        try:
            registered = Registered(
                corr=first.corr, cp_id=first.cp_id, central=self._instance, engine_key=engine_key
            )
            await send_frame(writer, registered)
            why = await self._heartbeats(first, frames, writer, peer, connection)
        except (ConnectionError, OSError):
            why = "connection lost"
        await self._left(connection, closed_by_central[0] if closed_by_central else why)

    async def _heartbeats(
        self,
        first: Register,
        frames: FrameReader,
        writer: asyncio.StreamWriter,
        peer: str,
        connection: _Connection,
    ) -> str:
        """Serve the monitor's heartbeats until its link ends; why it ended.

        The connection leaves its stream for a `HeartbeatLink`, which answers a heartbeat
        that changes nothing straight from the socket (no task, no timer per frame).
        """
        cp_id, instance = first.cp_id, first.instance
        stream = writer.transport.get_protocol()
        counts = self._counts

        def heard() -> None:
            connection.last_heartbeat = time.monotonic()
            counts["heartbeats"] += 1

        link = HeartbeatLink(
            cp_id,
            peer,
            quick=lambda hb: self._service.heartbeat_changes_nothing(
                cp_id, instance, hb.health, hb.engine, hb.detail
            ),
            slow=lambda hb: self._service.heartbeat(cp_id, instance, hb.health, hb.engine, hb.detail),
            heard=heard,
            on_lost=stream.connection_lost,
        )
        # No await between taking what was read and handing the transport over: no byte is lost.
        already_read = frames.detach()
        link.attach(writer.transport, already_read, ended=frames.ended)  # type: ignore[arg-type]
        return await link.run()


async def _reply_error(
    writer: asyncio.StreamWriter, corr: int, code: str, reason: str, leader: str = ""
) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        await send_frame(writer, ErrorReply(corr=corr, code=code, reason=reason, leader=leader))
