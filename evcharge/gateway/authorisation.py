"""Who a start at a charger is for: a start central asked for, or an RFID card central authorises now.

A driver's request reaches the gateway as central's `StartSupply`; it is kept
as a pending start and sent as a remote start, and the transaction that follows
binds to it (by remoteStartId in 2.0.1, by idTag in 1.6). A card shown at the
charger (Authorize, or a local start) is a driver request like any other: the
gateway asks central's HTTP API, which decides on its own state (the CP's
status, a session already running) and creates the session; the `StartSupply`
central then sends for it is recognised here and not sent to the charger again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass

import aiohttp

from evcharge.gateway.auth import DRIVER_ID
from evcharge.gateway.store import GatewayStore, PendingStart
from evcharge.protocol import signing

log = logging.getLogger("evcharge.gateway")

ACCEPTED, BLOCKED, INVALID = "Accepted", "Blocked", "Invalid"


@dataclass(frozen=True)
class Verdict:
    status: str  # the OCPP authorization status for the charger
    start: PendingStart | None = None
    reason: str = ""


class Authoriser:
    def __init__(
        self,
        store: GatewayStore,
        http: aiohttp.ClientSession,
        central_urls: str,
        *,
        price: int,
        timeout_s: float,
    ) -> None:
        self._store = store
        self._http = http
        # Any central will do (a standby forwards the request to the leader); the next is tried
        # only when one cannot be reached or has no leader to forward to.
        self._urls = [url.strip().rstrip("/") for url in central_urls.split(",") if url.strip()]
        if not self._urls:
            raise ValueError("at least one central URL")
        self._price = price
        self._timeout_s = timeout_s
        self._asking: Counter[tuple[str, str]] = Counter()

    def asking(self, cp_id: str, driver_id: str) -> bool:
        """Whether the gateway is asking central for this driver at this charger right now."""
        return self._asking[(cp_id, driver_id)] > 0

    async def authorise(self, cp_id: str, id_token: str, remote_start_id: int | None = None) -> Verdict:
        """A start central already asked for, or central's answer for this card now."""
        pending = await self._store.pending_for(cp_id, id_token, remote_start_id)
        if pending is not None:
            return Verdict(ACCEPTED, pending)
        if not DRIVER_ID.match(id_token):
            return Verdict(INVALID, reason=f"{id_token[:40]!r} cannot be a driver id at central")
        key = (cp_id, id_token)
        self._asking[key] += 1
        try:
            status, body = await self._ask(cp_id, id_token)
            session_id = body.get("session_id")
            if status == 201 and isinstance(session_id, str):
                # Kept before we stop "asking": central's StartSupply for it may be read meanwhile.
                start = await self._store.add_pending(
                    cp_id, session_id, id_token, self._price, "rfid", remote=False
                )
                log.info("%s: central authorised %s (session %s)", cp_id, id_token, session_id[:8])
                return Verdict(ACCEPTED, start)
        finally:
            self._asking[key] -= 1
            if self._asking[key] <= 0:
                del self._asking[key]
        reason = str(body.get("message") or body.get("error") or f"HTTP {status}")
        log.info("%s: central did not authorise %s: %s", cp_id, id_token, reason)
        return Verdict(BLOCKED if status == 409 else INVALID, reason=reason)

    async def _ask(self, cp_id: str, driver_id: str) -> tuple[int, dict[str, object]]:
        # The card has no driver's token: the charger vouches for it, signing the exact body with
        # the key central issued it (central requiring proofs takes nothing else from a charger).
        request = json.dumps({"driver_id": driver_id, "cp_id": cp_id}).encode()
        headers = {"Content-Type": "application/json"}
        key = self._store.engine_key(cp_id)
        if key is not None:
            headers[signing.SIGNATURE_HEADER] = signing.sign(key, request).decode()
        failures = []
        for url in self._urls:
            try:
                async with asyncio.timeout(self._timeout_s):
                    async with self._http.post(
                        f"{url}/request/charge", data=request, headers=headers
                    ) as response:
                        body = await response.json(content_type=None)
                        body = body if isinstance(body, dict) else {}
                        if response.status == 503 and body.get("error") == "not_leader":
                            failures.append(f"{url}: no leader")
                            continue  # refused before anything was decided: another may have one
                        return response.status, body
            except aiohttp.ClientConnectorError as exc:
                failures.append(f"{url}: {exc.__class__.__name__}")  # never reached: try the next
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                # It may have reached central: asking another could start a second session.
                failures.append(f"{url}: {exc.__class__.__name__}")
                break
        log.warning("%s: cannot ask central to authorise %s: %s", cp_id, driver_id, "; ".join(failures))
        return 0, {"message": f"central cannot be asked ({'; '.join(failures)})"}
