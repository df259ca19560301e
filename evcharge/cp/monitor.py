"""`evcharge monitor`: checks its engine every second and keeps central told.

Two loops share one `HealthTracker`: the engine check (TCP, a deadline per
check, and at once when the engine's connection drops) and the central link
(register, then a heartbeat each interval and at once on a change of health).
Each loop reconnects by itself; while central is away the checks go on, and
central hears the current health when it is back. With several centrals the
monitor follows the one that leads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
import uuid

from evcharge.cp.engine_key import keep_key, write_private
from evcharge.cp.health import HealthTracker
from evcharge.cp.settings import MonitorSettings
from evcharge.errors import ConnectionLost, ProtocolError, Refused, RequestTimeout
from evcharge.protocol.messages import Health, HealthCheck, HealthStatus, Heartbeat, Register, Registered
from evcharge.runtime.centrals import Centrals, register
from evcharge.runtime.retry import Attempts, LinkWatch, RetryPolicy, is_retriable, keep_trying
from evcharge.runtime.tcp import FramedConnection
from evcharge.runtime.tls import TlsRefused
from evcharge.runtime.waits import sleep_unless, wait_first

log = logging.getLogger("evcharge.monitor")

EXIT_REFUSED = 2
# A refused or reset connection is certain: the confirming checks come this soon (at most), so
# a dead engine is BROKEN in well under a second whatever the check interval.
CONFIRM_S = 0.2


class Monitor:
    def __init__(self, settings: MonitorSettings, *, policy: RetryPolicy | None = None) -> None:
        self.settings = settings
        self.tracker = HealthTracker(threshold=settings.failure_threshold)
        self.instance = uuid.uuid4().hex
        self._policy = policy or RetryPolicy(
            initial_delay_s=0.2, max_delay_s=2.0, retriable=_central_retriable
        )
        self._health_changed = asyncio.Event()
        self._first_verdict = asyncio.Event()
        self._engine: FramedConnection | None = None
        host, port = settings.engine_address
        self._engine_watch = LinkWatch(log, f"engine of {settings.cp_id}", f"{host}:{port}")
        self.exit_code = 0
        self._seen_ko = False
        self.engine_instance: str | None = None
        self.engine_detail = ""
        self._centrals = Centrals(settings.central)
        self._tls = settings.tls.client_context()

    async def run(self, stop: asyncio.Event) -> int:
        s = self.settings
        host, port = s.engine_address
        log.info("%s monitor: engine %s:%d, central %s", s.cp_id, host, port, self._centrals)
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
                    "%s engine BROKEN after %d failed checks", self.settings.cp_id, self.tracker.failures
                )
            elif change is Health.OK and self.tracker.failures == 0 and self._seen_ko:
                log.info("%s engine health restored", self.settings.cp_id)
            if change is not None:
                self._first_verdict.set()
                self._seen_ko = self._seen_ko or change is Health.KO
                self._health_changed.set()
            # A refused or reset connection is certain: check again soon so the
            # failures add up in a fraction of a second, not in three intervals.
            pause = min(interval / 5, CONFIRM_S) if (not ok and conclusive) else interval
            remaining = max(0.0, started + pause - time.monotonic())
            # The kernel closes our connection the moment the engine process dies:
            # that is worth checking at once rather than at the next tick.
            closed = self._engine.closed_event if self._engine is not None else asyncio.Event()
            await wait_first(stop, closed, timeout_s=remaining)

    async def _check_once(self, timeout_s: float) -> tuple[bool, bool]:
        """(healthy, conclusive): conclusive failures are refused or dropped connections."""
        host, port = self.settings.engine_address
        try:
            if self._engine is None or self._engine.closed:
                self._engine = await FramedConnection.open(host, port, timeout_s=timeout_s)
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
        if not isinstance(reply, HealthStatus):
            return False, False
        if reply.engine != self.engine_instance or reply.detail != self.engine_detail:
            # A restarted engine is a new instance: central must address it at once.
            self.engine_instance = reply.engine
            self.engine_detail = reply.detail
            self._health_changed.set()
        return reply.health is Health.OK, False

    async def _drop_engine(self) -> None:
        if self._engine is not None:
            await self._engine.close()
            self._engine = None

    # ----------------------------------------------------------- central

    async def _central_link(self, stop: asyncio.Event) -> None:
        await wait_first(stop, self._first_verdict)  # nothing to say before the engine was checked
        s = self.settings
        watch = LinkWatch(log, "central", str(self._centrals))
        refused_since: float | None = None
        while not stop.is_set():
            try:
                await keep_trying(
                    lambda attempts: self._serve_central(stop, attempts),
                    watch=watch,
                    stop=stop,
                    policy=self._policy,
                )
                return
            except TlsRefused as exc:
                log.error("%s: %s", s.cp_id, exc)
                self.exit_code = EXIT_REFUSED
                stop.set()
                return
            except Refused as exc:
                if exc.code in Refused.CREDENTIALS:  # no retry changes them: say why and exit
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

    def _secret(self) -> str | None:
        """The CP's own secret: read, or chosen and kept (0600) before it is ever sent."""
        path = self.settings.secret_path
        if path.exists():
            return path.read_text().strip() or None
        if self.settings.join_token is None:
            return None  # central does not ask for credentials
        secret = secrets.token_urlsafe(32)
        write_private(path, secret)
        log.info("%s: chose its secret for central, kept in %s", self.settings.cp_id, path)
        return secret

    def _register(self) -> Register:
        s = self.settings
        return Register(
            cp_id=s.cp_id,
            location=s.location,
            price=s.price,
            max_w=s.max_w,
            health=self.tracker.health or Health.KO,
            instance=self.instance,
            pid=os.getpid(),
            engine=self.engine_instance,
            token=s.join_token,
            secret=self._secret(),
        )

    async def _serve_central(self, stop: asyncio.Event, attempts: Attempts) -> None:
        s = self.settings
        timeout = s.heartbeat_interval_s * 2
        (conn, registered), (host, port) = await self._centrals.reach(
            lambda host, port: register(host, port, self._register, timeout_s=timeout, tls=self._tls),
            _central_retriable,
        )
        try:
            attempts.succeeded()
            engine_key = registered.engine_key if isinstance(registered, Registered) else None
            if engine_key and keep_key(s.key_path, engine_key):
                log.info("%s: kept the key its engine signs events with in %s", s.cp_id, s.key_path)
            health = (self.tracker.health or Health.KO).value
            log.info("%s registered with central at %s:%d (engine %s)", s.cp_id, host, port, health)
            while not stop.is_set():
                self._health_changed.clear()
                await wait_first(
                    stop, self._health_changed, conn.closed_event, timeout_s=s.heartbeat_interval_s
                )
                if stop.is_set():
                    return
                await conn.request(
                    Heartbeat(
                        cp_id=s.cp_id,
                        health=self.tracker.health or Health.KO,
                        engine=self.engine_instance,
                        detail=self.engine_detail,
                    ),
                    timeout_s=timeout,
                )
        except Exception:
            self._centrals.lost((host, port))
            raise
        finally:
            await conn.close()


def _central_retriable(exc: BaseException) -> bool:
    if isinstance(exc, Refused):
        return exc.code in Refused.TRANSIENT  # a standby, or a central that cannot record now
    return is_retriable(exc)
