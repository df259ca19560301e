"""An in-memory stand-in for central's web face: the dashboard's HTTP and SSE contract, no Kafka.

`FakeFleet` is the state and how it changes (plain code, no I/O, seeded); `FakeCentral` serves
it with aiohttp beside evcharge/central/web/, streams every change on GET /events, and can end
the streams and stay away for a while to play a central restart or fail-over. `FakeCentralThread`
runs one on its own event loop for synchronous tests (Playwright's sync API). By hand:

    python -m tests.web_fake_central --port 8000 --cps 1000      # then open http://127.0.0.1:8000/
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

WEB_DIR = Path(__file__).resolve().parent.parent / "evcharge" / "central" / "web"
WEB_FILES = frozenset({"index.html", "app.js", "style.css"})
TOKEN = "fake-operator-token"
PINNED = 10  # CP-001..CP-010 keep the state below and are never churned: tests can rely on them
CITIES = ["Alicante", "Elche", "Murcia", "Madrid", "Valencia", "Sevilla", "Bilbao", "Zaragoza", "Málaga"]
POWERS_W = [7400, 11000, 22000, 50000]
FAULTS = ["engine KO: ground fault", "engine KO: overcurrent", "engine not answering"]
HISTORY_MAX = 5000
STREAM_QUEUE_MAX = 20000  # a browser this far behind is cut off; it reconnects to a fresh snapshot

Event = tuple[str, dict[str, Any]]
T = TypeVar("T")


class Conflict(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class FakeCp:
    cp_id: str
    location: str
    price: int  # micro-EUR per kWh
    max_w: int
    stopped: bool = False
    monitor_connected: bool = True
    engine_health: str | None = "OK"
    detail: str = ""
    session: dict[str, Any] | None = None
    supplied_mj: int = 0  # milli-joules of the running session: integer metering, no float money

    @property
    def status(self) -> str:
        if not self.monitor_connected:
            return "DISCONNECTED"
        if self.engine_health != "OK":
            return "BROKEN"
        if self.stopped:
            return "STOPPED"
        return "SUPPLYING" if self.session else "ON"

    def to_json(self) -> dict[str, Any]:
        return {
            "cp_id": self.cp_id,
            "status": self.status,
            "location": self.location,
            "price": self.price,
            "max_w": self.max_w,
            "stopped": self.stopped,
            "monitor_connected": self.monitor_connected,
            "engine_health": self.engine_health if self.monitor_connected else None,
            "detail": self.detail,
            "session": dict(self.session) if self.session else None,
        }


@dataclass
class FakeFleet:
    """CPs, sessions and messages; every change returns the events central would stream for it."""

    size: int = 1000
    seed: int = 7
    tick_ms: int = 100
    speedup: int = 10  # energy flows this many times faster than real time, so tiles move visibly
    changes_per_tick: int = 3
    clock: Callable[[], float] = time.time
    cps: dict[str, FakeCp] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # ended sessions, newest first
    messages: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50))
    ticks: int = 0
    _rng: random.Random = field(init=False)
    _next_session: int = 0
    _revisions_due: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        now = self.clock()
        for n in range(1, self.size + 1):
            cp = FakeCp(
                cp_id=f"CP-{n:03d}",
                location=f"{CITIES[n % len(CITIES)]} {n}",
                price=250_000 + (n % 8) * 10_000,
                max_w=POWERS_W[n % len(POWERS_W)],
            )
            self.cps[cp.cp_id] = cp
            if n > PINNED:
                self._random_start_state(cp, now)
        self._pin(now)
        self._seed_history(now)

    def _pin(self, now: float) -> None:
        alice = self.cps["CP-001"]
        alice.max_w = 22_000
        self._start(alice, "driver-alice", now - 60, supplying=True)
        alice.supplied_mj = 22_000 * 60_000
        self._meter(alice)
        self.cps["CP-002"].stopped = True
        broken = self.cps["CP-003"]
        broken.engine_health, broken.detail = "KO", "engine KO: ground fault"
        gone = self.cps["CP-004"]
        gone.monitor_connected, gone.engine_health = False, None

    def _random_start_state(self, cp: FakeCp, now: float) -> None:
        roll = self._rng.random()
        if roll < 0.25:
            self._start(cp, f"driver-{self._rng.randrange(10_000):04d}", now - self._rng.randrange(900), True)
            cp.supplied_mj = cp.max_w * self._rng.randrange(1, 900_000)
            self._meter(cp)
        elif roll < 0.33:
            cp.stopped = True
        elif roll < 0.39:
            cp.engine_health, cp.detail = "KO", self._rng.choice(FAULTS)
        elif roll < 0.45:
            cp.monitor_connected, cp.engine_health = False, None

    def _seed_history(self, now: float) -> None:
        reasons = ["completed", "driver", "unplugged", "operator", "fault", "engine_failure", "interrupted"]
        for n in range(40):
            cp = self.cps[f"CP-{1 + n % 5:03d}"]
            started = now - 3600 * (48 - n)
            session = self._new_session(cp, ("driver-alice", "driver-bob")[n % 2], started)
            session.update(state="ended", started_at=started, ended_at=started + 1800, power_w=0)
            session["wh"] = 1000 + 137 * n
            session["micro_eur"] = session["wh"] * cp.price // 1000
            session["end_reason"] = reasons[n % len(reasons)]
            session["ticket_revision"] = {2: 1, 3: 1, 4: 2}.get(n, 0)
            session["provisional"] = n == 6
            self.history.insert(0, session)

    # ---- sessions and metering

    def _new_session(self, cp: FakeCp, driver_id: str, at: float) -> dict[str, Any]:
        self._next_session += 1
        return {
            "session_id": f"s-{self.seed:02d}-{self._next_session:06d}",
            "request_id": f"r-{self._next_session:06d}",
            "cp_id": cp.cp_id,
            "driver_id": driver_id,
            "state": "authorised",
            "price": cp.price,
            "created_at": at,
            "started_at": None,
            "ended_at": None,
            "power_w": 0,
            "wh": 0,
            "micro_eur": 0,
            "end_reason": None,
            "ticket_revision": 0,
            "provisional": False,
        }

    def _start(self, cp: FakeCp, driver_id: str, at: float, supplying: bool) -> None:
        cp.session = self._new_session(cp, driver_id, at)
        cp.supplied_mj = 0
        if supplying:
            cp.session.update(state="supplying", started_at=at, power_w=cp.max_w)

    def _meter(self, cp: FakeCp) -> None:
        assert cp.session is not None
        wh = cp.supplied_mj // 3_600_000
        cp.session.update(wh=wh, micro_eur=wh * cp.price // 1000)

    def _end(self, cp: FakeCp, reason: str) -> list[Event]:
        session = cp.session
        assert session is not None
        self._meter(cp)
        session.update(state="ended", ended_at=self.clock(), end_reason=reason, power_w=0)
        cp.session = None
        self.history.insert(0, session)
        del self.history[HISTORY_MAX:]
        if reason == "engine_failure":
            self._revisions_due.append((self.ticks + 20, session["session_id"]))
        wh, micro = session["wh"], session["micro_eur"]
        text = (
            f"{session['driver_id']} → {cp.cp_id}: ticket {wh // 1000}.{wh % 1000:03d} kWh, "
            f"{micro // 1_000_000}.{micro % 1_000_000 // 10_000:02d} EUR ({reason})"
        )
        return [("session_ended", dict(session)), self._message(text)]

    def _revise(self, session_id: str) -> list[Event]:
        for i, old in enumerate(self.history):
            if old["session_id"] == session_id:
                revised = dict(old, ticket_revision=old["ticket_revision"] + 1, wh=old["wh"] + 5)
                revised["micro_eur"] = revised["wh"] * revised["price"] // 1000
                self.history[i] = revised
                text = f"ticket of session {session_id} corrected (revision {revised['ticket_revision']})"
                return [("session_ended", dict(revised)), self._message(text, "warning")]
        return []

    def _message(self, text: str, level: str = "info") -> Event:
        message = {"at": self.clock(), "level": level, "text": text}
        self.messages.append(message)
        return ("message", message)

    def _cp_event(self, cp: FakeCp) -> Event:
        return ("cp", cp.to_json())

    # ---- what happens on its own

    def tick(self) -> list[Event]:
        """One tick: every supply meters; each session reports once a second (CP-001 every tick)."""
        self.ticks += 1
        events: list[Event] = []
        every = max(1, 1000 // self.tick_ms)
        for n, cp in enumerate(self.cps.values()):
            session = cp.session
            if session is None or session["state"] != "supplying" or cp.status != "SUPPLYING":
                continue
            cp.supplied_mj += session["power_w"] * self.tick_ms * self.speedup
            if cp.cp_id == "CP-001" or n % every == self.ticks % every:
                self._meter(cp)
                events.append(self._cp_event(cp))
        churnable = [cp for cp in list(self.cps.values())[PINNED:] if not cp.stopped]
        for cp in self._rng.sample(churnable, min(self.changes_per_tick, len(churnable))):
            events.extend(self._churn(cp))
        while self._revisions_due and self._revisions_due[0][0] <= self.ticks:
            events.extend(self._revise(self._revisions_due.pop(0)[1]))
        return events

    def _churn(self, cp: FakeCp) -> list[Event]:
        now = self.clock()
        events: list[Event] = []
        status = cp.status
        if status == "DISCONNECTED":
            cp.monitor_connected, cp.engine_health, cp.detail = True, "OK", ""
            events.append(self._message(f"{cp.cp_id} monitor connected"))
        elif status == "BROKEN":
            cp.engine_health, cp.detail = "OK", ""
            events.append(self._message(f"{cp.cp_id} engine OK again"))
        elif status == "SUPPLYING" and cp.session and cp.session["state"] == "authorised":
            cp.session.update(state="supplying", started_at=now, power_w=cp.max_w)
        elif status == "SUPPLYING":
            reason = self._rng.choices(
                ["completed", "driver", "unplugged", "fault", "engine_failure"], [5, 3, 2, 1, 1]
            )[0]
            events.extend(self._end(cp, reason))
            if reason in ("fault", "engine_failure"):
                cp.engine_health, cp.detail = "KO", self._rng.choice(FAULTS)
        else:
            roll = self._rng.random()
            if roll < 0.7:
                driver = f"driver-{self._rng.randrange(10_000):04d}"
                self._start(cp, driver, now, supplying=False)
                events.append(self._message(f"{driver} → {cp.cp_id}: authorised"))
            elif roll < 0.85:
                cp.engine_health, cp.detail = "KO", self._rng.choice(FAULTS)
                events.append(self._message(f"{cp.cp_id} BROKEN: {cp.detail}", "error"))
            else:
                cp.monitor_connected, cp.engine_health = False, None
                events.append(self._message(f"{cp.cp_id} monitor lost", "warning"))
        events.append(self._cp_event(cp))
        return events

    # ---- what the operator does (KeyError: unknown CP; Conflict: refused)

    def stop(self, cp_id: str) -> list[Event]:
        cp = self.cps[cp_id]
        events = self._end(cp, "operator") if cp.session else []
        cp.stopped = True
        return [*events, self._message(f"{cp_id} stopped by the operator"), self._cp_event(cp)]

    def resume(self, cp_id: str) -> list[Event]:
        cp = self.cps[cp_id]
        cp.stopped = False
        return [self._message(f"{cp_id} resumed by the operator"), self._cp_event(cp)]

    def forget(self, cp_id: str) -> list[Event]:
        cp = self.cps[cp_id]
        if cp.status != "DISCONNECTED":
            raise Conflict("cp_connected", f"{cp_id} is {cp.status}; only a DISCONNECTED CP can be forgotten")
        del self.cps[cp_id]
        return [("cp_removed", {"cp_id": cp_id}), self._message(f"{cp_id} forgotten by the operator")]

    # ---- what is read

    def snapshot(self, role: str, instance: str) -> dict[str, Any]:
        cps = [cp.to_json() for cp in self.cps.values()]
        return {
            "charging_points": cps,
            "sessions": [cp["session"] for cp in cps if cp["session"]],
            "messages": list(self.messages),
            "role": role,
            "instance": instance,
        }

    def sessions(
        self,
        *,
        driver_id: str = "",
        cp_id: str = "",
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        found = []
        for s in self.history:
            if (driver_id and s["driver_id"] != driver_id) or (cp_id and s["cp_id"] != cp_id):
                continue
            if (since is not None and s["created_at"] < since) or (
                until is not None and s["created_at"] > until
            ):
                continue
            found.append(s)
            if len(found) == limit:
                break
        return found


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class FakeCentral:
    """Serves a `FakeFleet` like central's HTTP port would, ticking it every `tick_ms`."""

    def __init__(
        self,
        fleet: FakeFleet,
        *,
        token: str | None = TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        ping_s: float = 10.0,
    ) -> None:
        self.fleet = fleet
        self.token = token
        self.host = host
        self.port = port
        self.ping_s = ping_s
        self.generation = 1
        self.streams_served = 0
        self._streams: set[asyncio.Queue[bytes | None]] = set()
        self._down_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self.app = web.Application(middlewares=[self._errors_and_auth])
        self.app.add_routes(
            [
                web.get("/", self._index),
                web.get("/web/{name}", self._asset),
                web.get("/health", self._health),
                web.get("/cp", self._list),
                web.post("/cp/stop-all", self._stop_all),
                web.post("/cp/resume-all", self._resume_all),
                web.get("/cp/{cp_id}", self._get),
                web.post("/cp/{cp_id}/stop", self._stop),
                web.post("/cp/{cp_id}/resume", self._resume),
                web.delete("/cp/{cp_id}", self._forget),
                web.get("/sessions", self._sessions),
                web.get("/events", self._events),
                web.post("/_fake/drop", self._drop),
            ]
        )
        self._runner = web.AppRunner(self.app, shutdown_timeout=1.0)
        self._site: web.SockSite | None = None
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def instance(self) -> str:
        return f"fake-central-{self.generation}"

    async def start(self) -> None:
        await self._runner.setup()
        await self._listen()
        self._own(self._tick_forever())

    async def close(self) -> None:
        """Stop ticking, end every stream, then stop serving; safe to call twice."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._end_streams()
        if self._site is not None:
            await self._refuse()
        await self._runner.cleanup()

    async def drop_streams(self, down_s: float = 0.0, *, refuse: bool = False) -> None:
        """End every open stream, as a central restart does; stay away for `down_s`.

        While away, `refuse` closes the listening socket (connection refused, like a dead
        process); otherwise every request is answered 503. Coming back is a new instance.
        """
        self._down_until = time.monotonic() + down_s
        self._end_streams()
        if refuse and self._site is not None:
            await self._refuse()
        self._own(self._come_back(down_s))

    # ---- plumbing

    def _own(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen(self) -> None:
        self._listener = socket.create_server((self.host, self.port))  # SO_REUSEADDR: the port again
        self.port = self._listener.getsockname()[1]
        self._site = web.SockSite(self._runner, self._listener)
        await self._site.start()

    async def _refuse(self) -> None:
        """Close the listening socket, so a connection is refused as by a dead process."""
        assert self._site is not None and self._listener is not None
        # On Python 3.11 a connection accepted in the loop's last pass is attached to its
        # server by a task that has not run yet; a server closed before it fails that attach
        # and leaks the connection's socket. So stop accepting, let those tasks run, close.
        asyncio.get_running_loop().remove_reader(self._listener.fileno())
        await asyncio.sleep(0)
        await self._site.stop()
        self._site = None

    async def _come_back(self, down_s: float) -> None:
        await asyncio.sleep(down_s)
        self.generation += 1
        if self._site is None:
            await self._listen()

    async def _tick_forever(self) -> None:
        period_s = self.fleet.tick_ms / 1000
        next_at = time.monotonic()
        while True:
            next_at += period_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            self.publish(self.fleet.tick())

    def publish(self, events: list[Event]) -> None:
        if not events:
            return
        chunk = b"".join(_sse(name, data) for name, data in events)
        for queue in list(self._streams):
            try:
                queue.put_nowait(chunk)
            except asyncio.QueueFull:
                self._streams.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    def _end_streams(self) -> None:
        for queue in self._streams:
            queue.put_nowait(None)
        self._streams.clear()

    @web.middleware
    async def _errors_and_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if time.monotonic() < self._down_until and request.path != "/_fake/drop":
            return _error(503, "unavailable", "central is restarting")
        changes = request.method in ("POST", "DELETE") and request.path.startswith("/cp")
        if changes and self.token is not None:
            presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if presented != self.token:
                return _error(
                    401, "unauthorized", "this needs the operator token: Authorization: Bearer <token>"
                )
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        if not response.prepared:
            response.force_close()  # no keep-alive, so a "refused" central refuses every request
        return response

    # ---- handlers

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in WEB_FILES:
            return _error(404, "not_found", f"no file {name}")
        return web.FileResponse(WEB_DIR / name)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "auth": self.token is not None,
                "role": "leader",
                "instance": self.instance,
                "charging_points": len(self.fleet.cps),
            }
        )

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({"charging_points": [cp.to_json() for cp in self.fleet.cps.values()]})

    async def _get(self, request: web.Request) -> web.Response:
        cp_id = request.match_info["cp_id"]
        if cp_id not in self.fleet.cps:
            return _error(404, "unknown_cp", f"{cp_id} is not a known charging point")
        return web.json_response(self.fleet.cps[cp_id].to_json())

    async def _operate(self, change: Callable[[str], list[Event]], cp_id: str) -> web.Response:
        try:
            self.publish(change(cp_id))
        except KeyError:
            return _error(404, "unknown_cp", f"{cp_id} is not a known charging point")
        except Conflict as exc:
            return _error(409, exc.code, exc.message)
        cp = self.fleet.cps.get(cp_id)
        return web.json_response(cp.to_json() if cp else {"forgotten": cp_id})

    async def _stop(self, request: web.Request) -> web.Response:
        return await self._operate(self.fleet.stop, request.match_info["cp_id"])

    async def _resume(self, request: web.Request) -> web.Response:
        return await self._operate(self.fleet.resume, request.match_info["cp_id"])

    async def _forget(self, request: web.Request) -> web.Response:
        return await self._operate(self.fleet.forget, request.match_info["cp_id"])

    async def _stop_all(self, request: web.Request) -> web.Response:
        for cp_id in list(self.fleet.cps):
            self.publish(self.fleet.stop(cp_id))
        return await self._list(request)

    async def _resume_all(self, request: web.Request) -> web.Response:
        for cp_id in list(self.fleet.cps):
            self.publish(self.fleet.resume(cp_id))
        return await self._list(request)

    async def _sessions(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            limit = int(query.get("limit", "100"))
            since = float(query["since"]) if query.get("since") else None
            until = float(query["until"]) if query.get("until") else None
            if not 1 <= limit <= 1000:
                raise ValueError
        except ValueError:
            return _error(400, "invalid_query", "limit is 1..1000; since and until are Unix seconds")
        found = self.fleet.sessions(
            driver_id=query.get("driver_id", ""),
            cp_id=query.get("cp_id", ""),
            since=since,
            until=until,
            limit=limit,
        )
        return web.json_response({"sessions": found})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        response.force_close()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=STREAM_QUEUE_MAX)
        # Subscribed and snapshotted without an await between: no event falls in the gap.
        self._streams.add(queue)
        snapshot = _sse("snapshot", self.fleet.snapshot("leader", self.instance))
        self.streams_served += 1
        try:
            await response.prepare(request)
            await response.write(snapshot)
            while True:
                try:
                    chunk = await asyncio.wait_for(queue.get(), timeout=self.ping_s)
                except TimeoutError:
                    chunk = b": ping\n\n"
                if chunk is None:
                    break
                await response.write(chunk)
        except ConnectionError:
            pass  # the browser went away
        finally:
            self._streams.discard(queue)
        return response

    async def _drop(self, request: web.Request) -> web.Response:
        down_s = float(request.query.get("down_s", "0"))
        refuse = request.query.get("mode", "503") == "refuse"
        await self.drop_streams(down_s, refuse=refuse)
        return web.json_response({"dropped": True, "down_s": down_s, "refuse": refuse})


class FakeCentralThread:
    """A `FakeCentral` on its own event loop in a daemon thread, for synchronous tests."""

    def __init__(self, central: FakeCentral) -> None:
        self.central = central
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-central", daemon=True)

    def __enter__(self) -> FakeCentralThread:
        self._thread.start()
        self.run(self.central.start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(Exception):
            self.run(self.central.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    @property
    def url(self) -> str:
        return self.central.url

    def run(self, coro: Awaitable[T], timeout_s: float = 10.0) -> T:
        async def wrapped() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(timeout_s)

    def call(self, fn: Callable[[], T], timeout_s: float = 10.0) -> T:
        """Run `fn` on the server's loop, where the fleet may be read and changed safely."""

        async def on_loop() -> T:
            return fn()

        return self.run(on_loop(), timeout_s)


@contextlib.contextmanager
def running_fake(
    cps: int = 1000, *, token: str | None = TOKEN, **fleet_options: Any
) -> Iterator[FakeCentralThread]:
    with FakeCentralThread(FakeCentral(FakeFleet(size=cps, **fleet_options), token=token)) as handle:
        yield handle


async def _serve(args: argparse.Namespace) -> None:
    fleet = FakeFleet(size=args.cps, seed=args.seed, tick_ms=args.tick_ms)
    central = FakeCentral(fleet, token=None if args.no_auth else args.token, host=args.host, port=args.port)
    await central.start()
    print(
        f"fake central on {central.url}/ ({args.cps} CPs, token {central.token!r}); Ctrl-C stops", flush=True
    )
    try:
        await asyncio.Event().wait()
    finally:
        await central.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--cps", type=int, default=1000)
    parser.add_argument("--tick-ms", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--token", default=TOKEN)
    parser.add_argument("--no-auth", action="store_true")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
