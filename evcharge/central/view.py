"""Central's state as the outside world reads it: a CP, a session, as JSON-ready dicts.

Pure. One shape for the HTTP API, the live web page and `evcharge ctl`; money and
energy stay integers (Wh, micro-euros, watts, micro-euros per kWh).
"""

from __future__ import annotations

from typing import Any

from evcharge.central.ledger import Session
from evcharge.central.state import CentralState


def session_json(s: Session) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "request_id": s.request_id,
        "cp_id": s.cp_id,
        "driver_id": s.driver_id,
        "state": s.state.value,
        "price": s.price,
        "created_at": s.created_at,
        "started_at": s.started_at,
        "ended_at": s.ended_at,
        "power_w": s.power_w,
        "wh": s.wh,
        "micro_eur": s.micro_eur,
        "end_reason": s.end_reason.value if s.end_reason else None,
        "ticket_revision": s.ticket_revision,
        "provisional": s.provisional,
    }


def cp_json(state: CentralState, cp_id: str) -> dict[str, Any]:
    record = state.cps[cp_id]
    session = state.session_on(cp_id)
    status = state.status(cp_id)
    link = state.links.get(cp_id)
    health = state.health.get(cp_id)
    return {
        "cp_id": cp_id,
        "status": status.value if status else None,
        "location": record.location,
        "price": record.price,
        "max_w": record.max_w,
        "stopped": record.stopped,
        "monitor_connected": link is not None,
        "monitor": {"instance": link.instance, "pid": link.pid, "peer": link.peer, "engine": link.engine}
        if link
        else None,
        "engine_health": health.value if health else None,
        "detail": state.detail.get(cp_id, ""),
        "session": session_json(session) if session else None,
    }


def cps_json(state: CentralState) -> list[dict[str, Any]]:
    return [cp_json(state, cp_id) for cp_id in sorted(state.cps)]
