"""The contract of central's HTTP API, as an OpenAPI 3.1 document served at `GET /openapi.json`.

Kept true by tests: every route central serves is described here and nothing else
(`tests/test_http_contract.py`), and schemathesis calls every operation against a
live central and checks each answer against its schema.
"""

from __future__ import annotations

from typing import Any

from evcharge import __version__

JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


INT = {"type": "integer"}
NUM = {"type": "number"}
STR = {"type": "string"}
NULLABLE_NUM = {"type": ["number", "null"]}
NULLABLE_STR = {"type": ["string", "null"]}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": STR, "message": STR},
    },
    "Session": {
        "type": "object",
        "required": ["session_id", "cp_id", "driver_id", "state", "price", "created_at", "wh", "micro_eur"],
        "properties": {
            "session_id": STR,
            "request_id": STR,
            "cp_id": STR,
            "driver_id": STR,
            "state": {"enum": ["authorised", "supplying", "ended"]},
            "price": {**INT, "description": "micro-euros per kWh"},
            "created_at": NUM,
            "started_at": NULLABLE_NUM,
            "ended_at": NULLABLE_NUM,
            "power_w": INT,
            "wh": {**INT, "description": "energy delivered, watt-hours"},
            "micro_eur": {**INT, "description": "cost, millionths of a euro"},
            "end_reason": NULLABLE_STR,
            "ticket_revision": {**INT, "description": "0: no ticket yet; 2: the meter revised the first"},
            "provisional": {"type": "boolean"},
        },
    },
    "ChargingPoint": {
        "type": "object",
        "required": ["cp_id", "status", "location", "price", "max_w", "stopped", "monitor_connected"],
        "properties": {
            "cp_id": STR,
            "status": {"enum": ["ON", "SUPPLYING", "STOPPED", "BROKEN", "DISCONNECTED"]},
            "location": STR,
            "price": {**INT, "description": "micro-euros per kWh"},
            "max_w": INT,
            "stopped": {"type": "boolean"},
            "monitor_connected": {"type": "boolean"},
            "monitor": {
                "type": ["object", "null"],
                "properties": {"instance": STR, "pid": INT, "peer": STR, "engine": NULLABLE_STR},
            },
            "engine_health": {"enum": ["OK", "KO", None]},
            "detail": STR,
            "session": {"oneOf": [_ref("Session"), {"type": "null"}]},
        },
    },
    "ChargingPoints": {
        "type": "object",
        "required": ["charging_points"],
        "properties": {"charging_points": {"type": "array", "items": _ref("ChargingPoint")}},
    },
    "Sessions": {
        "type": "object",
        "required": ["sessions"],
        "properties": {"sessions": {"type": "array", "items": _ref("Session")}},
    },
    "Health": {
        "type": "object",
        "required": ["status", "pid", "instance", "kafka", "store", "auth", "role"],
        "properties": {
            "status": {"const": "ok"},
            "version": STR,
            "pid": INT,
            "instance": STR,
            "started_at": NUM,
            "uptime_s": NUM,
            "kafka": {"enum": ["up", "unreachable"]},
            "store": STR,
            "auth": {"type": "boolean"},
            "role": {"enum": ["single", "leader", "standby"]},
            "leader": {
                "description": "the leading central as this one knows it (itself while it leads); "
                "null while none is known",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["instance", "http", "tcp", "pid"],
                        "properties": {"instance": STR, "http": STR, "tcp": STR, "pid": INT},
                    },
                ],
            },
            "epoch": {"type": ["integer", "null"], "description": "the lead's epoch while this leads"},
            "charging_points": INT,
            "sessions_in_progress": INT,
            "counters": {"type": "object", "additionalProperties": INT},
        },
    },
    "Messages": {
        "type": "object",
        "required": ["messages"],
        "properties": {
            "messages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["at", "level", "text"],
                    "properties": {"at": NUM, "level": {"enum": ["info", "warning", "error"]}, "text": STR},
                },
            }
        },
    },
    "ChargeBody": {
        "type": "object",
        "required": ["driver_id", "cp_id"],
        "additionalProperties": False,
        "properties": {
            "driver_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
            "cp_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
        },
    },
    "ChargeAccepted": {
        "type": "object",
        "required": ["outcome", "request_id", "session_id", "cp_id"],
        "properties": {"outcome": {"const": "accepted"}, "request_id": STR, "session_id": STR, "cp_id": STR},
    },
    "ChargeDenied": {
        "type": "object",
        "required": ["outcome", "error", "message", "request_id", "cp_id"],
        "properties": {
            "outcome": {"const": "denied"},
            "error": STR,
            "message": STR,
            "request_id": STR,
            "cp_id": STR,
        },
    },
    "Forgotten": {"type": "object", "required": ["forgotten"], "properties": {"forgotten": STR}},
    "DriverBody": {
        "type": "object",
        "required": ["driver_id"],
        "additionalProperties": False,
        "properties": {"driver_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}},
    },
    "DriverEnrolled": {
        "type": "object",
        "required": ["driver_id", "token"],
        "properties": {
            "driver_id": STR,
            "token": {**STR, "description": "shown once: the driver's --token (a new one replaces the old)"},
        },
    },
}

CP_ID = {"name": "cp_id", "in": "path", "required": True, "schema": STR}
# The token is needed only when central requires auth.
OPERATOR: list[dict[str, list[str]]] = [{"operator": []}, {}]
UNAUTHORIZED = _error("the operator token is missing or wrong (auth on)")
DRIVER: list[dict[str, list[str]]] = [{"driver": []}, {"operator": []}, {}]
UNAVAILABLE = _error("central cannot record right now (its store is full or away), or it is a standby")


def _operator(summary: str, ok: dict[str, Any], **errors: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": OPERATOR,
        "responses": {"200": ok, "401": UNAUTHORIZED, "503": UNAVAILABLE, **errors},
    }


def document() -> dict[str, Any]:
    one_cp = _json(_ref("ChargingPoint"), "the CP, after the change")
    all_cps = _json(_ref("ChargingPoints"), "every CP, after the change")
    unknown_cp = _error("no such CP")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "evcharge central",
            "version": __version__,
            "description": "Charging points, sessions and operator commands. Money and energy are integers: "
            "watt-hours, micro-euros, watts, micro-euros per kWh.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "operator": {"type": "http", "scheme": "bearer"},
                "driver": {"type": "http", "scheme": "bearer", "description": "a driver's enrolment token"},
            },
        },
        "paths": {
            "/health": {
                "get": {
                    "summary": "Is central up; who is it",
                    "responses": {"200": _json(_ref("Health"), "ok")},
                }
            },
            "/cp": {
                "get": {
                    "summary": "Every CP",
                    "responses": {"200": _json(_ref("ChargingPoints"), "every CP")},
                }
            },
            "/cp/{cp_id}": {
                "parameters": [CP_ID],
                "get": {
                    "summary": "One CP",
                    "responses": {"200": _json(_ref("ChargingPoint"), "the CP"), "404": unknown_cp},
                },
                "delete": _operator(
                    "Forget a disconnected CP (it may join again as new)",
                    _json(_ref("Forgotten"), "forgotten"),
                    **{"404": unknown_cp, "409": _error("connected, or a session in progress")},
                ),
            },
            "/cp/{cp_id}/stop": {
                "parameters": [CP_ID],
                "post": _operator("Stop a CP: out of order; ends its supply", one_cp, **{"404": unknown_cp}),
            },
            "/cp/{cp_id}/resume": {
                "parameters": [CP_ID],
                "post": _operator("Put a stopped CP back in service", one_cp, **{"404": unknown_cp}),
            },
            "/cp/stop-all": {"post": _operator("Stop every CP", all_cps)},
            "/cp/resume-all": {"post": _operator("Resume every CP", all_cps)},
            "/request/charge": {
                "post": {
                    "summary": "Ask for a charge (the same decision as a driver's request on Kafka)",
                    "description": "With auth on: the driver's own token (or the operator's) as the bearer, "
                    "or, for a card shown at a charger, the body signed with that CP's key in the "
                    "evcharge-sig header (hex HMAC-SHA256: what the OCPP gateway sends).",
                    "security": DRIVER,
                    "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ChargeBody")}}},
                    "responses": {
                        "201": _json(_ref("ChargeAccepted"), "authorised: a session starts"),
                        "400": _error("not a charge request"),
                        "401": _error("the driver's token is missing or wrong (auth on)"),
                        "404": _json(_ref("ChargeDenied"), "no such CP"),
                        "409": _json(_ref("ChargeDenied"), "denied, with the reason"),
                        "413": _error("body too large"),
                        "503": UNAVAILABLE,
                    },
                }
            },
            "/drivers": {
                "post": {
                    "summary": "Enrol a driver: its token, shown once; its requests must prove it (auth on)",
                    "security": OPERATOR,
                    "requestBody": {"required": True, "content": {JSON: {"schema": _ref("DriverBody")}}},
                    "responses": {
                        "201": _json(_ref("DriverEnrolled"), "enrolled, or given a new token"),
                        "400": _error("not a driver id"),
                        "401": UNAUTHORIZED,
                        "413": _error("body too large"),
                        "503": UNAVAILABLE,
                    },
                }
            },
            "/sessions": {
                "get": {
                    "summary": "Sessions, newest first",
                    "parameters": [
                        {"name": "driver_id", "in": "query", "schema": STR},
                        {"name": "cp_id", "in": "query", "schema": STR},
                        {
                            "name": "since",
                            "in": "query",
                            "schema": NUM,
                            "description": "created at or after (Unix s)",
                        },
                        {
                            "name": "until",
                            "in": "query",
                            "schema": NUM,
                            "description": "created before (Unix s)",
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                    ],
                    "responses": {"200": _json(_ref("Sessions"), "sessions"), "400": _error("a bad query")},
                }
            },
            "/sessions/{session_id}": {
                "parameters": [{"name": "session_id", "in": "path", "required": True, "schema": STR}],
                "get": {
                    "summary": "One session",
                    "responses": {
                        "200": _json(_ref("Session"), "the session"),
                        "404": _error("no such session"),
                    },
                },
            },
            "/messages": {
                "get": {
                    "summary": "The operator's latest messages",
                    "responses": {"200": _json(_ref("Messages"), "ok")},
                }
            },
            "/events": {
                "get": {
                    "summary": "Live changes for the web page (Server-Sent Events: snapshot, cp, cp_removed, "
                    "message, session_ended)",
                    "responses": {
                        "200": {"description": "an event stream", "content": {"text/event-stream": {}}}
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "the text format", "content": {"text/plain": {}}}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "ok", "content": {JSON: {}}}},
                }
            },
            "/": {
                "get": {
                    "summary": "The operator's web page",
                    "responses": {"200": {"description": "the page", "content": {"text/html": {}}}},
                }
            },
            "/web/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": STR}],
                "get": {
                    "summary": "The page's own scripts and styles",
                    "responses": {
                        "200": {
                            "description": "an asset",
                            "content": {"text/javascript": {}, "text/css": {}},
                        },
                        "404": _error("no such asset"),
                    },
                },
            },
        },
    }
