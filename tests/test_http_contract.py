"""Central's OpenAPI document is the truth about its HTTP API.

The routes central serves and the operations the document describes are the same
set; and schemathesis calls every documented operation on a live central (real
processes, a real CP) with generated input, checking each answer against the
document: status codes, content types, bodies, and never a 5xx.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from evcharge.central.http_api import CentralApi
from evcharge.central.observers import Counters, Messages
from evcharge.central.openapi import document

CONTRACT = document()
# The live feed never ends: its contract is the browser tests' (tests/test_web_page.py).
schema = schemathesis.openapi.from_dict(CONTRACT).exclude(path="/events")


def _served_operations() -> set[tuple[str, str]]:
    api = CentralApi(
        cast(Any, None), Messages(), Counters(), instance="x", kafka_up=lambda: True, store_state=lambda: "ok"
    )
    served = set()
    for route in api.app.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp answers HEAD for every GET by itself
        info = route.resource.get_info() if route.resource else {}
        served.add((route.method.lower(), info.get("path") or info.get("formatter", "")))
    return served


def test_every_route_central_serves_is_in_the_document_and_nothing_else() -> None:
    described = {
        (method, path)
        for path, item in CONTRACT["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    assert _served_operations() == described


@pytest.mark.kafka
@pytest.mark.processes
def test_the_document_central_serves_is_the_contract(live_central) -> None:
    served = live_central.get("/openapi.json")
    assert served == CONTRACT
    assert served["openapi"] == "3.1.0"


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    """One HTTP session for every call, closed at the end (no socket left to the collector)."""
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def live_central(kafka_broker, tmp_path_factory):
    """One central and one CP for the whole module: schemathesis calls it hundreds of times."""
    from tests.harness import System

    system = System(tmp_path_factory.mktemp("contract"), kafka_broker.bootstrap)
    system.max_session_s = 2
    system.start_central()
    system.add_cp(system.ident("CP-001"))
    yield system
    system.stop_all()
    assert system.central is not None and system.central.returncode == 0


@pytest.mark.kafka
@pytest.mark.processes
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_operation_answers_as_documented_and_never_with_a_5xx(case, live_central, http) -> None:
    case.call_and_validate(base_url=live_central.url, session=http, timeout=10)
    assert live_central.central.alive
