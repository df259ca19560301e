"""Central's HTTP API: read the CPs and sessions, ask for a charge, stop and resume CPs.

Every error is JSON `{"error": code, "message": text}` with the right status;
bad input is a 4xx, never a 500.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from typing import Any

import msgspec
from aiohttp import web

from evcharge import __version__
from evcharge.central.ledger import Session
from evcharge.central.service import CentralService
from evcharge.errors import Refused
from evcharge.messages import ChargeRequest

log = logging.getLogger("evcharge.central.http")

MAX_BODY_BYTES = 64 * 1024


class ChargeBody(msgspec.Struct, forbid_unknown_fields=True):
    driver_id: str
    cp_id: str


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return _error(500, "internal", "internal error; see central's log")


def session_json(s: Session) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "request_id": s.request_id,
        "cp_id": s.cp_id,
        "driver_id": s.driver_id,
        "state": s.state.value,
        "price_eur_kwh": s.price_eur_kwh,
        "created_at": s.created_at,
        "started_at": s.started_at,
        "ended_at": s.ended_at,
        "kw": s.kw,
        "kwh": s.kwh,
        "eur": s.eur,
        "end_reason": s.end_reason.value if s.end_reason else None,
    }


class CentralApi:
    def __init__(
        self,
        service: CentralService,
        started_at: float,
        kafka_up: Any,
        operator_token: str | None = None,
    ) -> None:
        self._service = service
        self._started_at = started_at
        self._kafka_up = kafka_up
        self._operator_token = operator_token
        self.app = web.Application(
            middlewares=[json_errors, self._operator_only], client_max_size=MAX_BODY_BYTES
        )
        self.app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/cp", self.list_cps),
                web.post("/cp/stop-all", self.stop_all),
                web.post("/cp/resume-all", self.resume_all),
                web.get("/cp/{cp_id}", self.get_cp),
                web.post("/cp/{cp_id}/stop", self.stop_cp),
                web.post("/cp/{cp_id}/resume", self.resume_cp),
                web.delete("/cp/{cp_id}", self.forget_cp),
                web.post("/request/charge", self.request_charge),
                web.get("/sessions", self.list_sessions),
                web.get("/sessions/{session_id}", self.get_session),
                web.get("/messages", self.list_messages),
            ]
        )

    @web.middleware
    async def _operator_only(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """With auth on, changing a CP (stop, resume, forget) needs the operator's bearer token."""
        if self._operator_token is None or request.method == "GET" or not request.path.startswith("/cp"):
            return await handler(request)
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), self._operator_token.encode()):
            self._service.audit.record(
                request.path, who="unknown", peer=str(request.remote), result="refused: no operator token"
            )
            return _error(401, "unauthorized", "this needs the operator token: Authorization: Bearer <token>")
        return await handler(request)

    def cp_json(self, cp_id: str) -> dict[str, Any]:
        live = self._service.cps[cp_id]
        session = self._service.session_on(cp_id)
        status = self._service.status(cp_id)
        return {
            "cp_id": cp_id,
            "status": status.value if status else None,
            "location": live.record.location,
            "price_eur_kwh": live.record.price_eur_kwh,
            "max_kw": live.record.max_kw,
            "stopped": live.record.stopped,
            "monitor_connected": live.monitor is not None,
            "engine_health": live.health.value if live.health else None,
            "session": session_json(session) if session else None,
        }

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "version": __version__,
                "uptime_s": round(time.monotonic() - self._started_at, 1),
                "kafka": "up" if self._kafka_up() else "unreachable",
                "charging_points": len(self._service.cps),
                "sessions_in_progress": len(self._service.active),
                "counters": dict(self._service.counters),
            }
        )

    async def list_cps(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"charging_points": [self.cp_json(cp_id) for cp_id in sorted(self._service.cps)]}
        )

    async def get_cp(self, request: web.Request) -> web.Response:
        cp_id = request.match_info["cp_id"]
        if cp_id not in self._service.cps:
            return _error(404, "unknown_cp", f"{cp_id} is not a known charging point")
        return web.json_response(self.cp_json(cp_id))

    async def stop_cp(self, request: web.Request) -> web.Response:
        return await self._operate(request.match_info["cp_id"], stop=True, by=_actor(request))

    async def resume_cp(self, request: web.Request) -> web.Response:
        return await self._operate(request.match_info["cp_id"], stop=False, by=_actor(request))

    async def _operate(self, cp_id: str, *, stop: bool, by: str) -> web.Response:
        try:
            await (self._service.stop_cp(cp_id, by) if stop else self._service.resume_cp(cp_id, by))
        except KeyError:
            return _error(404, "unknown_cp", f"{cp_id} is not a known charging point")
        return web.json_response(self.cp_json(cp_id))

    async def stop_all(self, request: web.Request) -> web.Response:
        return await self._operate_all(stop=True, by=_actor(request))

    async def resume_all(self, request: web.Request) -> web.Response:
        return await self._operate_all(stop=False, by=_actor(request))

    async def _operate_all(self, *, stop: bool, by: str) -> web.Response:
        for cp_id in sorted(self._service.cps):
            await (self._service.stop_cp(cp_id, by) if stop else self._service.resume_cp(cp_id, by))
        return web.json_response(
            {"charging_points": [self.cp_json(cp_id) for cp_id in sorted(self._service.cps)]}
        )

    async def forget_cp(self, request: web.Request) -> web.Response:
        cp_id = request.match_info["cp_id"]
        try:
            await self._service.forget_cp(cp_id, _actor(request))
        except KeyError:
            return _error(404, "unknown_cp", f"{cp_id} is not a known charging point")
        except Refused as exc:
            return _error(409, exc.code, exc.reason)
        return web.json_response({"forgotten": cp_id})

    async def request_charge(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = msgspec.json.decode(raw, type=ChargeBody)
            charge = ChargeRequest(driver_id=body.driver_id, cp_id=body.cp_id, request_id=uuid.uuid4().hex)
            # Re-validate through the wire schema so the API accepts exactly what Kafka accepts.
            charge = msgspec.json.decode(msgspec.json.encode(charge), type=ChargeRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _error(400, "invalid_body", f'expected JSON {{"driver_id": ..., "cp_id": ...}}: {exc}')
        outcome = await self._service.charge(charge)
        if outcome.outcome == "accepted":
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
            limit = int(request.query.get("limit", "100"))
            if not 1 <= limit <= 1000:
                raise ValueError
        except ValueError:
            return _error(400, "invalid_query", "limit must be a whole number from 1 to 1000")
        sessions = await self._service.store.sessions(
            driver_id=request.query.get("driver_id"), cp_id=request.query.get("cp_id"), limit=limit
        )
        return web.json_response({"sessions": [session_json(s) for s in sessions]})

    async def get_session(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        session = self._service.active.get(session_id) or await self._service.store.session(session_id)
        if session is None:
            return _error(404, "unknown_session", f"no session {session_id}")
        return web.json_response(session_json(session))

    async def list_messages(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"messages": [{"at": m.at, "level": m.level, "text": m.text} for m in self._service.messages]}
        )


def _actor(request: web.Request) -> str:
    return f"http {request.remote}"
