"""Central's HTTP API: read the CPs and sessions, ask for a charge, stop and resume CPs.

Every error is JSON `{"error": code, "message": text}` with the right status;
bad input is a 4xx, never a 500; a store that cannot record is a 503 the client
may retry.
"""

from __future__ import annotations

import hmac
import importlib.resources
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from evcharge import __version__
from evcharge.central import facts, openapi, provenance
from evcharge.central.cp_listing import CpListing
from evcharge.central.leadership import Holder
from evcharge.central.live import LiveFeed
from evcharge.central.metrics import CONTENT_TYPE as METRICS_TYPE
from evcharge.central.observers import Counters, Messages
from evcharge.central.service import CentralService
from evcharge.central.standby import Standby
from evcharge.central.state import Outcome
from evcharge.central.store import SessionQuery
from evcharge.central.view import cp_json, cps_json, session_json
from evcharge.errors import Fenced, Refused, StoreUnavailable
from evcharge.protocol import signing
from evcharge.protocol.messages import ChargeRequest, DriverId

log = logging.getLogger("evcharge.central.http")

MAX_BODY_BYTES = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Any CP id but the two names of operations on all of them (no CP may take those names).
ONE_CP = "/cp/{cp_id:(?!(?:stop|resume)-all$)[^/]+}"
ASSETS = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
WEB = importlib.resources.files("evcharge.central") / "web"


class ChargeBody(msgspec.Struct, forbid_unknown_fields=True):
    driver_id: str
    cp_id: str


class DriverBody(msgspec.Struct, forbid_unknown_fields=True):
    driver_id: DriverId


_charge_request = msgspec.json.Decoder(ChargeRequest)


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        answer = error(
            exc.status, (exc.reason or "error").lower().replace(" ", "_"), exc.text or exc.reason or ""
        )
        if "Allow" in exc.headers:  # a 405 says which methods the path takes
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer
    except StoreUnavailable as exc:
        return error(503, "unavailable", f"central cannot record right now: {exc}")
    except Fenced:
        return error(503, "not_leader", "this central just lost the lead to another; retry in a second")
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error(500, "internal", "internal error; see central's log")


_REFUSAL_STATUS = {"unknown_cp": 404, "unknown_session": 404, "not_leader": 503}


class CentralApi:
    def __init__(
        self,
        service: CentralService,
        messages: Messages,
        counters: Counters,
        *,
        instance: str,
        kafka_up: Callable[[], bool],
        store_state: Callable[[], str],
        role: Callable[[], str] = lambda: "single",
        operator_token: str | None = None,
        live: LiveFeed | None = None,
        metrics: Callable[[], Awaitable[bytes]] | None = None,
        leader: Callable[[], Holder | None] = lambda: None,
        epoch: Callable[[], int | None] = lambda: None,
        standby: Standby | None = None,
        drivers_proven: bool = False,
    ) -> None:
        self._service = service
        # As on Kafka: with proofs on, a charge asked over HTTP shows the driver's own token
        # (or the operator's); without them a driver id is a name, as on a trusted network.
        self._drivers_proven = drivers_proven
        self._messages = messages
        self._counters = counters
        self._instance = instance
        self._started_at = time.time()
        self._started_monotonic = time.monotonic()
        self._kafka_up = kafka_up
        self._store_state = store_state
        self._role = role
        self._operator_token = operator_token
        self._live = live
        self._metrics = metrics
        self._leader = leader
        self._epoch = epoch
        self._contract = msgspec.json.encode(openapi.document())
        self._listing = CpListing(lambda: service.state)
        middlewares: list[Any] = [json_errors, self._operator_only]
        if standby is not None:
            middlewares.append(standby.middleware)
        self.app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
        self.app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/cp", self.list_cps),
                web.post("/cp/stop-all", self.stop_all),
                web.post("/cp/resume-all", self.resume_all),
                web.get(ONE_CP, self.get_cp),
                web.post(ONE_CP + "/stop", self.stop_cp),
                web.post(ONE_CP + "/resume", self.resume_cp),
                web.delete(ONE_CP, self.forget_cp),
                web.post("/request/charge", self.request_charge),
                web.post("/drivers", self.enrol_driver),
                web.get("/sessions", self.list_sessions),
                web.get("/sessions/{session_id}", self.get_session),
                web.get("/messages", self.list_messages),
                web.get("/events", self.events),
                web.get("/metrics", self.metrics),
                web.get("/openapi.json", self.contract),
                web.get("/", self.page),
                web.get("/web/{name}", self.asset),
            ]
        )

    @property
    def auth(self) -> bool:
        return self._operator_token is not None

    @web.middleware
    async def _operator_only(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """With auth on, changing a CP (stop, resume, forget) or enrolling a driver needs the
        operator's bearer token."""
        if (
            self._operator_token is None
            or request.method in ("GET", "HEAD")
            or not request.path.startswith(("/cp", "/drivers"))
        ):
            return await handler(request)
        if not self._is_operator(request):
            presented = _bearer(request)
            why = "a wrong operator token" if presented else "no operator token"
            self._service.tell(facts.OperatorRefused(request.path, "unknown", why, str(request.remote)))
            return error(401, "unauthorized", "this needs the operator token: Authorization: Bearer <token>")
        return await handler(request)

    def _is_operator(self, request: web.Request) -> bool:
        token = self._operator_token
        return token is not None and hmac.compare_digest(_bearer(request).encode(), token.encode())

    async def enrol_driver(self, request: web.Request) -> web.Response:
        """A driver's token, shown once: from now on its requests must carry its proof."""
        try:
            body = msgspec.json.decode(await request.read(), type=DriverBody)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return error(400, "invalid_body", f'expected JSON {{"driver_id": ...}}: {exc}')
        token = await self._service.enrol_driver(body.driver_id, "http", str(request.remote))
        return web.json_response({"driver_id": body.driver_id, "token": token}, status=201)

    async def health(self, request: web.Request) -> web.Response:
        state = self._service.state
        return web.json_response(
            {
                "status": "ok",
                "version": __version__,
                "pid": os.getpid(),
                "instance": self._instance,
                "started_at": self._started_at,
                "uptime_s": round(time.monotonic() - self._started_monotonic, 1),
                "kafka": "up" if self._kafka_up() else "unreachable",
                "store": self._store_state(),
                "auth": self.auth,
                "role": self._role(),
                "leader": _holder_json(self._leader()),
                "epoch": self._epoch(),
                "charging_points": len(state.cps),
                "sessions_in_progress": len(state.sessions),
                "counters": dict(self._counters.counts),
            }
        )

    async def list_cps(self, request: web.Request) -> web.Response:
        return web.Response(body=self._listing.body(), content_type="application/json")

    async def get_cp(self, request: web.Request) -> web.Response:
        cp_id = request.match_info["cp_id"]
        if cp_id not in self._service.state.cps:
            return error(404, "unknown_cp", f"{cp_id} is not a known charging point")
        return web.Response(body=self._listing.cp(cp_id), content_type="application/json")

    async def stop_cp(self, request: web.Request) -> web.Response:
        return await self._operate(request, [request.match_info["cp_id"]], stopped=True)

    async def resume_cp(self, request: web.Request) -> web.Response:
        return await self._operate(request, [request.match_info["cp_id"]], stopped=False)

    async def stop_all(self, request: web.Request) -> web.Response:
        return await self._operate(request, None, stopped=True)

    async def resume_all(self, request: web.Request) -> web.Response:
        return await self._operate(request, None, stopped=False)

    async def _operate(
        self, request: web.Request, targets: list[str] | None, *, stopped: bool
    ) -> web.Response:
        try:
            await self._service.set_stopped(targets, stopped, "http", str(request.remote))
        except Refused as exc:
            return error(_REFUSAL_STATUS.get(exc.code, 409), exc.code, exc.reason)
        if targets is None:
            return web.json_response({"charging_points": cps_json(self._service.state)})
        return web.json_response(cp_json(self._service.state, targets[0]))

    async def forget_cp(self, request: web.Request) -> web.Response:
        cp_id = request.match_info["cp_id"]
        try:
            await self._service.forget(cp_id, "http", str(request.remote))
        except Refused as exc:
            return error(_REFUSAL_STATUS.get(exc.code, 409), exc.code, exc.reason)
        return web.json_response({"forgotten": cp_id})

    async def request_charge(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = msgspec.json.decode(raw, type=ChargeBody)
            charge = ChargeRequest(driver_id=body.driver_id, cp_id=body.cp_id, request_id=uuid.uuid4().hex)
            # Re-validate through the wire schema so the API accepts exactly what Kafka accepts.
            charge = _charge_request.decode(msgspec.json.encode(charge))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return error(400, "invalid_body", f'expected JSON {{"driver_id": ..., "cp_id": ...}}: {exc}')
        # An OCPP charger's gateway asks for the card shown at it, signed with that CP's key.
        vouched = request.headers.get(signing.SIGNATURE_HEADER)
        if self._drivers_proven and not (
            self._is_operator(request)
            or provenance.token_matches(self._service.state, charge.driver_id, _bearer(request))
            or provenance.cp_vouches(
                self._service.state, charge.cp_id, raw, vouched.encode() if vouched else None
            )
        ):
            if vouched:
                why = f"a signature not by {charge.cp_id}'s key"
            else:
                why = "a wrong driver token" if _bearer(request) else "no driver token"
            self._service.tell(
                facts.OperatorRefused(request.path, charge.driver_id, why, str(request.remote))
            )
            return error(
                401,
                "unauthorized",
                f"asking as {charge.driver_id} needs its token: Authorization: Bearer <token>",
            )
        outcome = await self._service.charge(charge, source=f"http {request.remote}")
        if outcome.outcome is Outcome.ACCEPTED:
            return web.json_response(
                {
                    "outcome": "accepted",
                    "request_id": outcome.request_id,
                    "session_id": outcome.session_id,
                    "cp_id": outcome.cp_id,
                },
                status=201,
            )
        status = 404 if outcome.code == "unknown_cp" else 409
        return web.json_response(
            {
                "outcome": "denied",
                "error": outcome.code,
                "message": outcome.reason,
                "request_id": outcome.request_id,
                "cp_id": outcome.cp_id,
            },
            status=status,
        )

    async def list_sessions(self, request: web.Request) -> web.Response:
        try:
            query = SessionQuery(
                driver_id=request.query.get("driver_id") or None,
                cp_id=request.query.get("cp_id") or None,
                since=_float(request.query.get("since")),
                until=_float(request.query.get("until")),
                limit=int(request.query.get("limit", "100")),
            )
            if not 1 <= query.limit <= 1000:
                raise ValueError
        except ValueError:
            return error(
                400, "invalid_query", "limit must be a whole number from 1 to 1000; since/until Unix seconds"
            )
        sessions = await self._service.store.sessions(query)
        return web.json_response({"sessions": [session_json(s) for s in sessions]})

    async def get_session(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        session = self._service.state.sessions.get(session_id)
        if session is None:
            session = (await self._service.store.sessions_by_id([session_id])).get(session_id)
        if session is None:
            return error(404, "unknown_session", f"no session {session_id}")
        return web.json_response(session_json(session))

    async def list_messages(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"messages": [{"at": m.at, "level": m.level, "text": m.text} for m in self._messages.latest]}
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self._live is None:
            return error(404, "not_found", "this central has no live feed")
        return await self._live.serve(request)

    async def metrics(self, request: web.Request) -> web.Response:
        if self._metrics is None:
            return error(404, "not_found", "this central keeps no metrics")
        return web.Response(body=await self._metrics(), headers={"Content-Type": METRICS_TYPE})

    async def contract(self, request: web.Request) -> web.Response:
        return web.Response(body=self._contract, content_type="application/json")

    async def page(self, request: web.Request) -> web.Response:
        return _asset("index.html")

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS or name == "index.html":
            return error(404, "not_found", f"no asset {name}")
        return _asset(name)


def _bearer(request: web.Request) -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def _holder_json(holder: Holder | None) -> dict[str, Any] | None:
    if holder is None:
        return None
    return {"instance": holder.instance, "http": holder.http, "tcp": holder.tcp, "pid": holder.pid}


def _asset(name: str) -> web.Response:
    # Read on each call: small files, and an operator's edit shows on reload.
    return web.Response(
        body=(WEB / name).read_bytes(),
        content_type=ASSETS[name],
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value
