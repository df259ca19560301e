"""The live feed of the operator's web page: Server-Sent Events at `GET /events`.

A page that connects gets one `snapshot` (every CP, the sessions in progress, the
latest messages), then what changes: `cp` (the CP as `GET /cp/<id>` shows it),
`cp_removed`, `message`, `session_ended`. Changes are gathered and sent every
`FLUSH_S`, each changed CP encoded once for every page; a page that falls too far
behind is let go, and comes back (EventSource reconnects) to a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from evcharge.central import facts as f
from evcharge.central.observers import Messages, PanelMessage
from evcharge.central.state import CentralState
from evcharge.central.view import cp_json, cps_json, session_json
from evcharge.runtime.waits import sleep_unless

log = logging.getLogger("evcharge.central.live")

FLUSH_S = 0.2
PING_S = 10.0
QUEUE_EVENTS = 5000  # a page this far behind is let go rather than slowing central down
KEEP_MESSAGES = 50


def _cp_ids(fact: f.Fact) -> tuple[str, ...]:
    match fact:
        case f.CpRegistered(cp_id=cp_id) | f.MonitorLeft(cp_id=cp_id) | f.HealthChanged(cp_id=cp_id):
            return (cp_id,)
        case f.Authorised(cp_id=cp_id) | f.LocalSupply(cp_id=cp_id) | f.OperatorChanged(cp_id=cp_id):
            return (cp_id,)
        case f.SessionClosed(session=session):
            return (session.cp_id,)
        case f.EventsApplied(cp_ids=cp_ids):
            return cp_ids
        case _:
            return ()


def event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class _Page:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_EVENTS)
        self.behind = False

    def send(self, chunk: bytes | None) -> None:
        try:
            self.queue.put_nowait(chunk)
        except asyncio.QueueFull:
            self.behind = True


class LiveFeed:
    def __init__(
        self, state: Callable[[], CentralState], messages: Messages, *, role: Callable[[], str], instance: str
    ) -> None:
        self._state = state
        self._messages = messages
        self._role = role
        self._instance = instance
        self._pages: set[_Page] = set()
        self._dirty: set[str] = set()
        self._removed: set[str] = set()
        self._ended: list[dict[str, Any]] = []
        self._said: list[PanelMessage] = []
        messages.listeners.append(self._on_message)

    def _on_message(self, message: PanelMessage) -> None:
        if self._pages:
            self._said.append(message)

    @property
    def pages(self) -> int:
        return len(self._pages)

    def observe(self, facts: Sequence[f.Fact], state: CentralState) -> None:
        if not self._pages:
            return
        for fact in facts:
            self._dirty.update(_cp_ids(fact))
            if isinstance(fact, f.CpForgotten):
                self._removed.add(fact.cp_id)
            elif isinstance(fact, (f.SessionClosed, f.TicketRevised)):
                self._ended.append(session_json(fact.session))

    async def run(self, stop: asyncio.Event) -> None:
        """Send what changed every FLUSH_S, and a ping every PING_S so a dead page is noticed."""
        quiet = 0.0
        while not await sleep_unless(stop, FLUSH_S):
            chunks = self._changes()
            quiet = 0.0 if chunks else quiet + FLUSH_S
            if quiet >= PING_S:
                chunks, quiet = [b": ping\n\n"], 0.0
            if chunks:
                payload = b"".join(chunks)
                for page in list(self._pages):
                    page.send(payload)
        self.close()

    def _changes(self) -> list[bytes]:
        state = self._state()
        chunks = [event("cp_removed", {"cp_id": cp_id}) for cp_id in sorted(self._removed)]
        chunks += [event("cp", cp_json(state, cp_id)) for cp_id in sorted(self._dirty) if cp_id in state.cps]
        chunks += [event("session_ended", s) for s in self._ended]
        chunks += [event("message", {"at": m.at, "level": m.level, "text": m.text}) for m in self._said]
        self._dirty.clear()
        self._removed.clear()
        self._ended.clear()
        self._said.clear()
        return chunks

    def close(self) -> None:
        """Let every page go (central is stopping): their streams end, they reconnect elsewhere."""
        for page in list(self._pages):
            page.send(None)

    def snapshot(self) -> bytes:
        state = self._state()
        return event(
            "snapshot",
            {
                "charging_points": cps_json(state),
                "sessions": [session_json(s) for s in state.sessions.values()],
                "messages": [
                    {"at": m.at, "level": m.level, "text": m.text}
                    for m in list(self._messages.latest)[-KEEP_MESSAGES:]
                ],
                "role": self._role(),
                "instance": self._instance,
            },
        )

    async def serve(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        page = _Page()
        self._pages.add(page)
        try:
            await response.write(b"retry: 1000\n\n" + self.snapshot())
            while not page.behind:
                chunk = await page.queue.get()
                if chunk is None:
                    break
                await response.write(chunk)
            if page.behind:
                log.info(
                    "a page at %s fell too far behind the live feed: let go (it reconnects)", request.remote
                )
        except (ConnectionError, OSError):
            pass  # the page went away
        finally:
            self._pages.discard(page)
        with contextlib.suppress(ConnectionError, OSError):
            await response.write_eof()
        return response
