"""Central's HTTP API against arbitrary input (hypothesis): always a JSON answer, never a 500."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = [pytest.mark.kafka, pytest.mark.processes]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
BODIES = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"driver_id": JSON, "cp_id": JSON}).map(lambda v: json.dumps(v).encode()),
)


def call(url: str, method: str, body: bytes | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def central(system):
    system.start_central()
    return system


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_any_charge_request_body_gets_a_json_4xx_or_a_decision(central, body: bytes) -> None:
    status, answer = call(f"{central.url}/request/charge", "POST", body)
    assert status in (201, 400, 404, 409, 413), (status, answer)
    assert isinstance(answer, dict) and ("error" in answer or "outcome" in answer)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    segment=st.text(min_size=1, max_size=40),
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"]),
    path=st.sampled_from(["/cp/{}", "/cp/{}/stop", "/cp/{}/resume", "/sessions/{}", "/sessions?limit={}"]),
)
def test_any_path_and_method_gets_a_json_answer_and_never_a_500(
    central, segment: str, method: str, path: str
) -> None:
    url = central.url + path.format(urllib.parse.quote(segment, safe=""))
    status, answer = call(url, method, b"" if method != "GET" else None)
    assert status < 500, (url, method, status, answer)
    assert isinstance(answer, dict)
    assert central.central.alive
