"""What a standby central does with HTTP: serve the reads it can, hand the writes to the leader.

A standby keeps a live copy of the leader's view of the CPs (it follows the
leader's own `GET /events`) and answers `GET /cp` and `GET /cp/<id>` from it, and
`GET /sessions` from the shared store; the page's live feed is passed through from
the leader. Everything that changes something (`POST`, `DELETE`: a charge, an
operator's stop) is forwarded to the leader with its body and its operator token,
and the leader's answer is returned as is. With no leader known (mid take-over)
the answer is a 503 `not_leader` the client may retry a second later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from evcharge.central.leadership import Holder
from evcharge.runtime.waits import sleep_unless, wait_first

log = logging.getLogger("evcharge.central.standby")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FORWARD_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 2.0
RETRY_S = 0.25
STAKE_WAIT_S = 5.0
EVENT_STREAM = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEP_MESSAGES = 50
# Headers of the client's request the leader needs to judge it the same way.
# evcharge-sig: a CP's own signature over a charge it asks for (a card shown at an OCPP charger).
FORWARDED_HEADERS = ("Authorization", "Content-Type", "Accept", "evcharge-sig")


def not_leader(message: str) -> web.Response:
    return web.json_response(
        {"error": "not_leader", "message": message}, status=503, headers={"Retry-After": "1"}
    )


def done_event(task: asyncio.Task[Any]) -> asyncio.Event:
    """An event set when `task` is done, to wait on beside others."""
    event = asyncio.Event()
    task.add_done_callback(lambda _: event.set())
    return event


class LeaderMirror:
    """The leader's view of the CPs, kept by following its live feed."""

    def __init__(self, leader: Callable[[], Holder | None]) -> None:
        self._leader = leader
        self.cps: dict[str, dict[str, Any]] = {}
        self.messages: deque[dict[str, Any]] = deque(maxlen=KEEP_MESSAGES)
        self.of: str | None = None  # the leader instance the copy follows, while it is live
        self.updated_at = 0.0

    async def run(self, stop: asyncio.Event, session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            leader = self._leader()
            if leader is None:
                self.of = None
                if await sleep_unless(stop, RETRY_S):
                    return
                continue
            following = asyncio.create_task(self._follow(leader, session, stop))
            try:
                # A quiet stream (pings are 10 s apart) must not hold a stop back.
                await wait_first(stop, done_event(following))
                if not following.done():
                    following.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await following
                    return
                following.result()
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                if self.of is not None:
                    log.info("standby lost the leader's live feed (%s): following it again", exc)
            self.of = None
            if await sleep_unless(stop, RETRY_S):
                return

    async def _follow(self, leader: Holder, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_read=30.0)
        async with session.get(f"{leader.http}/events", timeout=timeout) as response:
            if response.status != 200:
                raise ValueError(f"the leader's /events answered {response.status}")
            name, data = "", []
            async for raw in response.content:
                if stop.is_set() or self._leader() != leader:
                    return  # the lead moved: follow the new leader
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and name:
                    self._apply(name, json.loads("\n".join(data)), leader)
                    name, data = "", []

    def _apply(self, name: str, data: Any, leader: Holder) -> None:
        if name == "snapshot":
            self.cps = {cp["cp_id"]: cp for cp in data["charging_points"]}
            self.messages.clear()
            self.messages.extend(data["messages"])
            self.of = leader.instance
            log.info("standby follows the leader's view (%d CPs) from %s", len(self.cps), leader.http)
        elif name == "cp":
            self.cps[data["cp_id"]] = data
        elif name == "cp_removed":
            self.cps.pop(data["cp_id"], None)
        elif name == "message":
            self.messages.append(data)
        self.updated_at = time.time()


class Standby:
    """The HTTP face of a central while it does not lead (an aiohttp middleware)."""

    def __init__(
        self,
        leading: Callable[[], bool],
        leader: Callable[[], Holder | None],
        *,
        staked: asyncio.Event,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._leading = leading
        self._tls = tls  # the leader is reached over HTTPS, its certificate checked
        self._leader = leader
        self._staked = staked
        # Followed only while another central leads: a leader has its own view.
        self.mirror = LeaderMirror(lambda: None if leading() else leader())
        self._session: aiohttp.ClientSession | None = None

    async def run(self, stop: asyncio.Event) -> None:
        connector = aiohttp.TCPConnector(ssl=self._tls) if self._tls is not None else None
        async with aiohttp.ClientSession(connector=connector) as session:
            self._session = session
            try:
                await self.mirror.run(stop, session)
            finally:
                self._session = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        writes = request.method in ("POST", "DELETE", "PUT", "PATCH")
        if self._leading():
            if writes and not self._staked.is_set():
                # Leading, but not yet sure it is alone on Kafka: a moment, not a refusal.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STAKE_WAIT_S):
                        await self._staked.wait()
                if not self._staked.is_set():
                    return not_leader("central is still making sure it is the only one on this Kafka")
            return await handler(request)
        path = request.path
        if writes:
            return await self._forward(request)
        if path == "/events":
            return await self._pass_through(request)
        if path == "/cp" or path.startswith("/cp/") or path == "/messages":
            return self._from_mirror(request)
        return await handler(request)  # /health, /sessions, /metrics, the page: this central's own

    def _where(self) -> Holder | None:
        return self._leader() if self._session is not None else None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        leader = self._where()
        if leader is None or self._session is None:
            return not_leader("this central is a standby and no leader is known right now; retry in a second")
        headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
        headers["X-Forwarded-For"] = str(request.remote)
        try:
            async with self._session.request(
                request.method,
                f"{leader.http}{request.rel_url}",
                data=await request.read(),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                allow_redirects=False,
            ) as answer:
                body = await answer.read()
                return web.Response(
                    body=body,
                    status=answer.status,
                    headers={
                        "Content-Type": answer.headers.get("Content-Type", "application/json"),
                        "X-Evcharge-Leader": leader.http,
                    },
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return not_leader(
                f"this central is a standby and the leader at {leader.http} did not answer ({exc})"
            )

    async def _pass_through(self, request: web.Request) -> web.StreamResponse:
        leader = self._where()
        if leader is None or self._session is None:
            return not_leader("no leader right now: the page reconnects by itself")
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_read=30.0)
        try:
            upstream = await self._session.get(f"{leader.http}/events", timeout=timeout)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return not_leader(f"the leader at {leader.http} did not answer ({exc})")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                if self._leading() or self._leader() != leader:
                    break  # the lead moved: the page reconnects and gets the new leader's view
                await response.write(chunk)
        except (aiohttp.ClientError, ConnectionError, OSError, TimeoutError):
            pass  # either side went away: the page reconnects
        finally:
            upstream.release()
        with contextlib.suppress(ConnectionError, OSError):
            await response.write_eof()
        return response

    def _from_mirror(self, request: web.Request) -> web.Response:
        mirror = self.mirror
        if mirror.of is None:
            return not_leader("this standby has no live view of the leader right now; retry in a second")
        headers = {"X-Evcharge-Served-By": "standby"}
        path = request.path
        if path == "/messages":
            return web.json_response({"messages": list(mirror.messages)}, headers=headers)
        if path == "/cp":
            cps = [mirror.cps[cp_id] for cp_id in sorted(mirror.cps)]
            return web.json_response({"charging_points": cps}, headers=headers)
        cp_id = path.removeprefix("/cp/")
        if cp_id not in mirror.cps:
            return web.json_response(
                {"error": "unknown_cp", "message": f"{cp_id} is not a known charging point"}, status=404
            )
        return web.json_response(mirror.cps[cp_id], headers=headers)
