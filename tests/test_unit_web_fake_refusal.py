"""The fake central's "refuses connections" outage: its port closes like a dead process's.

The browser tests stage a central that refuses connections; a connection the fake had
accepted at that very instant must be served or closed, never leaked (a leaked socket
fails whichever test the garbage collector happens to run in).
"""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest

from tests.web_fake_central import FakeCentral, FakeFleet


async def test_a_connection_accepted_as_the_port_closes_is_answered_and_the_next_is_refused() -> None:
    central = FakeCentral(FakeFleet(size=5), token=None)
    await central.start()
    try:
        with socket.create_connection((central.host, central.port), timeout=5) as caught:
            # The first pass of the loop accepts it; the second closes the port before that
            # connection is attached to the server, the instant an outage can begin at.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            await central.drop_streams(down_s=30.0, refuse=True)
            caught.sendall(b"GET /health HTTP/1.1\r\nHost: fake\r\n\r\n")
            reply = await asyncio.to_thread(caught.recv, 4096)
            assert reply.startswith(b"HTTP/1.1 503"), reply
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((central.host, central.port), timeout=5).close()
    finally:
        await central.close()
    gc.collect()  # a leaked transport warns here, and warnings are errors
