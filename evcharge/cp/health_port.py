"""The engine's health port: the monitor's checks and the CP's local controls, over framed TCP.

Shared by the real engine and the fleet simulator's engines, so both answer the
monitor exactly alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
from collections.abc import Awaitable, Callable

from evcharge.cp.engine_state import EngineState
from evcharge.errors import ProtocolError
from evcharge.protocol.messages import (
    ControlResult,
    EngineAction,
    EngineControl,
    ErrorReply,
    Health,
    HealthCheck,
    HealthStatus,
)
from evcharge.runtime.tcp import FrameReader, peer_name, send_frame

IDLE_CONNECTION_S = 30.0

Control = Callable[[EngineAction], Awaitable[str]]


def health_status(state: EngineState, corr: int = 0, instance: str | None = None) -> HealthStatus:
    """What the engine says of itself: its health and why, its supply, and who it is (instance, pid)."""
    supply = state.supply
    return HealthStatus(
        corr=corr,
        cp_id=state.cp_id,
        health=Health.OK if state.healthy else Health.KO,
        supplying=supply is not None,
        session_id=supply.session_id if supply else None,
        engine=instance,
        pid=os.getpid(),
        detail=state.detail,
    )


async def serve_health_port(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    state: EngineState,
    *,
    on_protocol_error: Callable[[str, ProtocolError], None],
    control: Control | None = None,
    on_check: Callable[[], None] | None = None,
    instance: str | None = None,
) -> None:
    """Serve one connection until it closes, idles out, or sends garbage (answered, then closed).

    `control` carries out local actions (plug, unplug, fault, clear, status); they
    are accepted from loopback peers only.
    """
    frames = FrameReader(reader)
    try:
        while True:
            frame = await frames.read(timeout_s=IDLE_CONNECTION_S)
            if frame is None:
                break
            if isinstance(frame, HealthCheck):
                if on_check is not None:
                    on_check()
                await send_frame(writer, health_status(state, frame.corr, instance))
            elif isinstance(frame, EngineControl) and control is not None:
                if not _is_loopback(writer):
                    reply = ErrorReply(corr=frame.corr, code="forbidden", reason="controls are local only")
                    await send_frame(writer, reply)
                    continue
                detail = await control(frame.action)
                await send_frame(writer, ControlResult(corr=frame.corr, ok=True, detail=detail))
            else:
                reason = f"{type(frame).__name__} is not served here"
                await send_frame(writer, ErrorReply(corr=frame.corr, code="unexpected", reason=reason))
    except TimeoutError:
        pass  # an idle peer: it reconnects when it needs us
    except ProtocolError as exc:
        on_protocol_error(peer_name(writer), exc)
        with contextlib.suppress(ConnectionError, OSError):
            await send_frame(writer, ErrorReply(code="protocol_error", reason=str(exc)))
    except (ConnectionError, OSError):
        pass


def _is_loopback(writer: asyncio.StreamWriter) -> bool:
    peer = writer.get_extra_info("peername")
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except (TypeError, ValueError, IndexError):
        return False
