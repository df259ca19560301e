"""Central's TCP endpoint for monitors: register, then heartbeats carrying the engine's health.

One task per connection. The first frame must be a registration; anything
else, garbage, or silence past the deadline closes that connection with a
logged reason and touches nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from evcharge.central.service import CentralService, MonitorLink
from evcharge.errors import ProtocolError, Refused
from evcharge.messages import Ack, ErrorReply, Heartbeat, Register, Registered
from evcharge.runtime.tcp import FrameReader, OwnedServer, peer_name, send_frame
from evcharge.runtime.waits import sleep_unless

log = logging.getLogger("evcharge.central.tcp")

REGISTER_DEADLINE_S = 5.0


class MonitorServer:
    def __init__(self, service: CentralService, host: str, port: int) -> None:
        self._service = service
        self.host = host
        self.port = port
        self._server = OwnedServer(self._serve, "monitors")

    async def start(self) -> None:
        self.port = await self._server.start(self.host, self.port)
        log.info("listening for monitors on %s:%d", self.host, self.port)

    async def close(self) -> None:
        """Stop accepting, then drop every monitor connection (they reconnect to the next central)."""
        await self._server.close()

    async def watch_heartbeats(self, stop: asyncio.Event) -> None:
        """A monitor that is hung keeps its socket open: silence past the timeout drops it."""
        while not stop.is_set():
            for cp_id, link in self._service.stale_links():
                link.close(f"no heartbeat for {self._service.heartbeat_timeout_s:g} s")
                await self._service.monitor_gone(cp_id, link, "no heartbeat")
            await sleep_unless(stop, 0.25)

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
        closed_by_central: list[str] = []

        def close(reason: str) -> None:
            closed_by_central.append(reason)
            writer.close()

        link = MonitorLink(instance=first.instance, peer=peer, close=close)
        try:
            issued = await self._service.register(first, link)
        except Refused as exc:
            await _reply_error(writer, first.corr, exc.code, exc.reason)
            return
        why = "connection closed"
        try:
            await send_frame(writer, Registered(corr=first.corr, cp_id=first.cp_id, secret=issued))
            while True:
                timeout = self._service.heartbeat_timeout_s * 2
                frame = await frames.read(timeout_s=timeout)
                if frame is None:
                    break
                if isinstance(frame, Heartbeat) and frame.cp_id == first.cp_id:
                    await self._service.heartbeat(first.cp_id, link, frame.health, frame.engine)
                    await send_frame(writer, Ack(corr=frame.corr))
                else:
                    log.warning(
                        "monitor %s (%s) sent an unexpected %s: closed",
                        peer,
                        first.cp_id,
                        type(frame).__name__,
                    )
                    await _reply_error(writer, frame.corr, "unexpected", "only heartbeats after registering")
                    why = "protocol violation"
                    break
        except TimeoutError:
            why = "no heartbeat"
        except ProtocolError as exc:
            log.warning("monitor %s (%s): %s: closed", peer, first.cp_id, exc)
            why = "protocol error"
        except (ConnectionError, OSError):
            why = "connection lost"
        await self._service.monitor_gone(
            first.cp_id, link, closed_by_central[0] if closed_by_central else why
        )


async def _reply_error(writer: asyncio.StreamWriter, corr: int, code: str, reason: str) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        await send_frame(writer, ErrorReply(corr=corr, code=code, reason=reason))
