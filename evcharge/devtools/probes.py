"""Asking a running role about itself through its real interface, from synchronous code.

The demo, the tests and the benchmark find out whether an engine is ready (its
health port answers), who it is (its instance and pid) and whether central is
up (`GET /health`) this way, never by reading log text.
"""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.error
import urllib.request
from typing import Any

from evcharge.errors import ProtocolError
from evcharge.protocol.framing import FrameDecoder, encode_frame
from evcharge.protocol.messages import TCP_FRAMES, HealthCheck, HealthStatus, encode


def engine_status(host: str, port: int, timeout_s: float = 1.0) -> HealthStatus | None:
    """What the engine on `host:port` says of itself, or None when it does not answer."""
    with (
        contextlib.suppress(OSError, ProtocolError, TimeoutError),
        socket.create_connection((host, port), timeout=timeout_s) as sock,
    ):
        sock.settimeout(timeout_s)
        sock.sendall(encode_frame(encode(HealthCheck(corr=1))))
        decoder = FrameDecoder()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            for payload in decoder.feed(chunk):
                frame = TCP_FRAMES.decode(payload)
                if isinstance(frame, HealthStatus):
                    return frame
    return None


def http_json(url: str, timeout_s: float = 2.0) -> Any:
    """GET `url` as JSON; None when nothing answers (or answers an error)."""
    with (
        contextlib.suppress(OSError, ValueError, urllib.error.URLError),
        urllib.request.urlopen(url, timeout=timeout_s) as response,
    ):
        return json.load(response)
    return None
