"""`evcharge monitor`: checks its engine every second and keeps central told.

Two loops share one `HealthTracker`: the engine check (TCP, a deadline per
check) and the central link (register, then a heartbeat each interval and at
once on a change of health). Each loop reconnects by itself; while central is
away the checks go on, and central hears the current health when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from evcharge.cp.health import HealthTracker
from evcharge.errors import ConnectionLost, ProtocolError, Refused, RequestTimeout
from evcharge.messages import Health, HealthCheck, HealthStatus, Heartbeat, Register, Registered
from evcharge.runtime.backoff import Backoff
from evcharge.runtime.reconnect import LinkWatch, is_retriable
from evcharge.runtime.tcp import FramedConnection
from evcharge.runtime.waits import sleep_unless, wait_first

log = logging.getLogger("evcharge.monitor")

EXIT_REFUSED = 2


@dataclass(frozen=True)
class MonitorSettings:
    cp_id: str
    engine_host: str
    engine_port: int
    central_host: str
    central_port: int
    location: str = "unknown"
    price_eur_kwh: float = 0.30
    max_kw: float = 22.0
    check_interval_s: float = 1.0
    failure_threshold: int = 3
    heartbeat_interval_s: float = 1.0
    claim_timeout_s: float = 10.0
    join_token: str | None = None
    # Where the secret central hands out at the first registration is kept.
    secret_path: Path | None = None


class Monitor:
    def __init__(self, settings: MonitorSettings) -> None:
        self.settings = settings
        self.tracker = HealthTracker(threshold=settings.failure_threshold)
        self.instance = uuid.uuid4().hex
        self._health_changed = asyncio.Event()
        self._first_verdict = asyncio.Event()
        self._engine: FramedConnection | None = None
        self._engine_watch = LinkWatch(
            log, f"engine of {settings.cp_id}", f"{settings.engine_host}:{settings.engine_port}"
        )
        self.exit_code = 0
        self._seen_ko = False
        self.engine_instance: str | None = None

    async def run(self, stop: asyncio.Event) -> int:
        s = self.settings
        log.info(
            "%s monitor: engine %s:%d, central %s:%d",
            s.cp_id,
            s.engine_host,
            s.engine_port,
            s.central_host,
            s.central_port,
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._check_engine(stop), name="engine checks")
                tasks.create_task(self._central_link(stop), name="central link")
        finally:
            if self._engine is not None:
                await self._engine.close()
        return self.exit_code

    # ------------------------------------------------------------ engine

    async def _check_engine(self, stop: asyncio.Event) -> None:
        interval = self.settings.check_interval_s
        while not stop.is_set():
            started = time.monotonic()
            ok, conclusive = await self._check_once(timeout_s=interval * 0.8)
            change = self.tracker.observe(ok)
            if change is Health.KO:
                log.warning(
                    "%s engine BROKEN after %d failed checks",
                    self.settings.cp_id,
                    self.tracker.failures,
                )
            elif change is Health.OK and self.tracker.failures == 0 and self._seen_ko:
                log.info("%s engine health restored", self.settings.cp_id)
            if change is not None:
                self._first_verdict.set()
                self._seen_ko = self._seen_ko or change is Health.KO
                self._health_changed.set()
            # A refused or reset connection is certain: check again soon so the
            # failures add up in a fraction of a second, not in three intervals.
            pause = interval / 5 if (not ok and conclusive) else interval
            if await sleep_unless(stop, max(0.0, started + pause - time.monotonic())):
                return

    async def _check_once(self, timeout_s: float) -> tuple[bool, bool]:
        """(healthy, conclusive): conclusive failures are refused or dropped connections."""
        s = self.settings
        try:
            if self._engine is None or self._engine.closed:
                self._engine = await FramedConnection.open(s.engine_host, s.engine_port, timeout_s=timeout_s)
            reply = await self._engine.request(HealthCheck(), timeout_s=timeout_s)
        except (ConnectionRefusedError, ConnectionLost, ConnectionResetError) as exc:
            await self._drop_engine()
            self._engine_watch.failed(exc)
            return False, True
        except (RequestTimeout, TimeoutError, OSError, ProtocolError, Refused) as exc:
            await self._drop_engine()
            self._engine_watch.failed(exc)
            return False, False
        self._engine_watch.succeeded()
        if isinstance(reply, HealthStatus) and reply.engine != self.engine_instance:
            # A restarted engine is a new instance: central must address it at once.
            self.engine_instance = reply.engine
            self._health_changed.set()
        return isinstance(reply, HealthStatus) and reply.health is Health.OK, False

    async def _drop_engine(self) -> None:
        if self._engine is not None:
            await self._engine.close()
            self._engine = None

    # ----------------------------------------------------------- central

    async def _central_link(self, stop: asyncio.Event) -> None:
        s = self.settings
        watch = LinkWatch(log, "central", f"{s.central_host}:{s.central_port}")
        backoff = Backoff(initial_delay_s=0.2, max_delay_s=2.0)
        refused_since: float | None = None
        await wait_first(stop, self._first_verdict)  # nothing to say before the engine was checked
        while not stop.is_set():
            try:
                await self._serve_central(stop, watch, backoff)
                return
            except Refused as exc:
                if exc.code in ("bad_token", "bad_secret"):
                    log.error("central refused %s: %s", s.cp_id, exc.reason)
                    self.exit_code = EXIT_REFUSED
                    stop.set()
                    return
                if exc.code != "duplicate_cp":
                    raise
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since > s.claim_timeout_s:
                    log.error("central refused %s: %s", s.cp_id, exc.reason)
                    self.exit_code = EXIT_REFUSED
                    stop.set()
                    return
                log.warning(
                    "central refused %s (%s); retrying for up to %g s in case that monitor is gone",
                    s.cp_id,
                    exc.reason,
                    s.claim_timeout_s,
                )
                await sleep_unless(stop, 1.0)
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                delay = backoff.next_delay()
                watch.failed(exc, delay)
                await sleep_unless(stop, delay)

    def _stored_secret(self) -> str | None:
        path = self.settings.secret_path
        if path is None or not path.exists():
            return None
        return path.read_text().strip() or None

    def _keep_secret(self, secret: str) -> None:
        """Written before use, readable by this user only: without it the CP cannot register again."""
        path = self.settings.secret_path
        if path is None:
            log.warning(
                "%s: central issued a secret but this monitor has nowhere to keep it", self.settings.cp_id
            )
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.touch(mode=0o600)
        temporary.write_text(secret + "\n")
        temporary.replace(path)
        log.info("%s joined central; its secret is kept in %s", self.settings.cp_id, path)

    async def _serve_central(self, stop: asyncio.Event, watch: LinkWatch, backoff: Backoff) -> None:
        s = self.settings
        timeout = s.heartbeat_interval_s * 2
        conn = await FramedConnection.open(s.central_host, s.central_port, timeout_s=timeout)
        try:
            health = self.tracker.health or Health.KO
            registered = await conn.request(
                Register(
                    cp_id=s.cp_id,
                    location=s.location,
                    price_eur_kwh=s.price_eur_kwh,
                    max_kw=s.max_kw,
                    health=health,
                    instance=self.instance,
                    engine=self.engine_instance,
                    token=s.join_token,
                    secret=self._stored_secret(),
                ),
                timeout_s=timeout,
            )
            if isinstance(registered, Registered) and registered.secret:
                self._keep_secret(registered.secret)
            watch.succeeded()
            backoff.reset()
            log.info(
                "%s registered with central at %s:%d (engine %s)",
                s.cp_id,
                s.central_host,
                s.central_port,
                health.value,
            )
            while not stop.is_set():
                self._health_changed.clear()
                await wait_first(
                    stop, self._health_changed, conn.closed_event, timeout_s=s.heartbeat_interval_s
                )
                if stop.is_set():
                    return
                await conn.request(
                    Heartbeat(
                        cp_id=s.cp_id, health=self.tracker.health or Health.KO, engine=self.engine_instance
                    ),
                    timeout_s=timeout,
                )
        finally:
            await conn.close()
