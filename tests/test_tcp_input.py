"""The TCP entry points against bad input: central's monitor port and an engine's health port.

Each bad connection is answered with an error where possible and closed; the
registered CP, its live monitor and the processes carry on.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evcharge.protocol.framing import FrameDecoder, encode_frame
from evcharge.protocol.messages import TCP_FRAMES, ErrorReply, Health, Heartbeat, encode

pytestmark = [pytest.mark.kafka, pytest.mark.processes]


def exchange(port: int, payload: bytes, *, timeout_s: float = 8.0) -> bytes:
    """Send `payload`, close our side, and return everything the server says until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received


def replies(data: bytes) -> list:
    return [TCP_FRAMES.decode(frame) for frame in FrameDecoder().feed(data)]


@pytest.fixture
def live_cp(system):
    system.start_central()
    return system.add_cp(system.ident("CP-001"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.one_of(st.binary(max_size=200), st.binary(max_size=50).map(lambda b: b"EV\x01" + b)))
def test_arbitrary_bytes_never_hurt_central_or_an_engine(system, live_cp, garbage: bytes) -> None:
    for port in (system.tcp_port, live_cp.engine_port):
        # exchange() returns only once the server closed the connection (or raises on its timeout).
        answer = exchange(port, garbage)
        assert all(isinstance(reply, ErrorReply) for reply in replies(answer)), answer
    assert system.central.alive and live_cp.engine.alive
    assert system.status(live_cp.cp_id) == "ON"


def test_bad_frames_get_a_clear_error_and_the_live_cp_is_untouched(system, live_cp) -> None:
    oversized = b"EV\x01" + struct.pack(">I", 10_000_000)
    (error,) = replies(exchange(system.tcp_port, oversized))
    assert isinstance(error, ErrorReply) and "exceeds" in error.reason

    (error,) = replies(exchange(system.tcp_port, b"GET / HTTP/1.1\r\n\r\n"))
    assert error.code == "protocol_error" and "not an evcharge frame" in error.reason

    early = encode_frame(encode(Heartbeat(corr=1, cp_id=live_cp.cp_id, health=Health.OK)))
    (error,) = replies(exchange(system.tcp_port, early))
    assert error.code == "not_registered"

    (error,) = replies(exchange(live_cp.engine_port, b"\x00" * 16))
    assert error.code == "protocol_error"

    assert system.status(live_cp.cp_id) == "ON"
    log = system.central.output()
    assert "exceeds" in log and "before registering" in log
    assert system.unexpected_log_lines() == {}


def test_a_slow_sender_is_dropped_after_the_deadline(system, live_cp) -> None:
    with socket.create_connection(("127.0.0.1", system.tcp_port), timeout=15) as sock:
        sock.sendall(b"EV\x01\x00")  # a frame that never finishes
        started = time.monotonic()
        assert sock.recv(4096) == b"", "central closes the connection"
        waited = time.monotonic() - started
    assert 3.0 < waited < 12.0
    assert system.status(live_cp.cp_id) == "ON"


def test_a_flood_of_connections_leaves_registration_and_status_working(system, live_cp) -> None:
    sockets = [socket.create_connection(("127.0.0.1", system.tcp_port), timeout=5) for _ in range(300)]
    try:
        assert system.status(live_cp.cp_id) == "ON"
        newcomer = system.add_cp(system.ident("CP-002"))
        assert system.status(newcomer.cp_id) == "ON"
    finally:
        for sock in sockets:
            sock.close()
    assert system.central.alive
