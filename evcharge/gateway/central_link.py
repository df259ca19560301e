"""The monitor's role for one connected charger: register it at central and keep central told.

While a charger's WebSocket is up its `CentralLink` holds a TCP link to central
in the monitor protocol (`Register`, then a `Heartbeat` each interval and at once
when the charger's health changes), with the gateway's join token and the
charger's own secret, exactly as `evcharge monitor` does. When the charger goes
away the link is closed, which central sees at once: DISCONNECTED. Outages of
central are waited out with the shared retry policy; one calm line per outage is
logged for all chargers together, not one per charger.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from evcharge.errors import Refused
from evcharge.protocol.messages import Health, Heartbeat, Register, Registered
from evcharge.runtime.centrals import Centrals, register
from evcharge.runtime.retry import Attempts, LinkWatch, RetryPolicy, is_retriable, keep_trying
from evcharge.runtime.tls import TlsRefused
from evcharge.runtime.waits import wait_first

log = logging.getLogger("evcharge.gateway")

# A registration is given longer than a heartbeat: after a gateway restart a thousand of them
# reach central at once, and one retried while the first is still in flight at central can
# leave central holding the stale link (see the report on central's monitor server).
REGISTER_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Identity:
    """What the charger registers as at central."""

    cp_id: str
    location: str
    price: int
    max_w: int
    instance: str  # the gateway process: a reconnect through it is the same monitor, not a second
    token: str | None
    secret: str | None


def _retriable(exc: BaseException) -> bool:
    if isinstance(exc, Refused):
        # Another live monitor for the id (a gateway central has not dropped yet) may go away.
        return exc.code in Refused.TRANSIENT or exc.code == "duplicate_cp"
    return is_retriable(exc)


class CentralLink:
    def __init__(
        self,
        identity: Identity,
        centrals: tuple[tuple[str, int], ...],
        *,
        tls: ssl.SSLContext | None,
        keep_key: Callable[[str], Awaitable[None]],
        health: Callable[[], tuple[Health, str]],
        heartbeat_interval_s: float,
        watch: LinkWatch,
        policy: RetryPolicy,
    ) -> None:
        self.identity = identity
        self._centrals = Centrals(centrals)  # this charger's own: which central took it last
        self._tls = tls
        self._keep_key = keep_key
        self._health = health
        self._interval_s = heartbeat_interval_s
        self._watch = watch
        self._policy = RetryPolicy(
            policy.initial_delay_s, policy.max_delay_s, policy.factor, policy.jitter, _retriable
        )
        self._changed = asyncio.Event()
        self.registered = asyncio.Event()
        self.refusal: str | None = None

    def health_changed(self) -> None:
        self._changed.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: a central refusal no retry can change ends it, with `refusal` saying why."""
        try:
            await keep_trying(self._serve, watch=self._watch, stop=stop, policy=self._policy)
        except TlsRefused as exc:  # central's certificate (or ours): no retry mends it
            self.refusal = f"no TLS link to central for {self.identity.cp_id}: {exc}"
        except Refused as exc:
            self.refusal = f"central refused {self.identity.cp_id}: {exc.reason}"
            if exc.code not in Refused.CREDENTIALS:
                raise

    def _register(self) -> Register:
        me = self.identity
        health, _detail = self._health()
        return Register(
            cp_id=me.cp_id,
            location=me.location,
            price=me.price,
            max_w=me.max_w,
            health=health,
            instance=me.instance,
            pid=os.getpid(),
            engine=me.instance,
            token=me.token,
            secret=me.secret,
        )

    async def _serve(self, attempts: Attempts) -> None:
        me = self.identity
        timeout = self._interval_s * 2
        dial_timeout = max(timeout, REGISTER_TIMEOUT_S)
        (conn, registered), (host, port) = await self._centrals.reach(
            lambda host, port: register(host, port, self._register, timeout_s=dial_timeout, tls=self._tls),
            _retriable,
        )
        try:
            attempts.succeeded()
            # Central issues a key to every CP that registers with the join token; the charger's
            # events are signed with it (and, with proofs required at central, applied only so).
            engine_key = registered.engine_key if isinstance(registered, Registered) else None
            if engine_key:
                await self._keep_key(engine_key)
            self.registered.set()
            log.debug("%s registered with central at %s:%d", me.cp_id, host, port)
            while True:
                self._changed.clear()
                health, detail = self._health()
                await conn.request(
                    Heartbeat(cp_id=me.cp_id, health=health, engine=me.instance, detail=detail),
                    timeout_s=timeout,
                )
                await wait_first(self._changed, conn.closed_event, timeout_s=self._interval_s)
        except Exception:
            self._centrals.lost((host, port))
            raise
        finally:
            self.registered.clear()
            await conn.close()
