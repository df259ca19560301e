"""The TLS listener of central's monitor port (`OwnedServer` with a certificate), on real loopback
sockets, on both event loops the roles run on.

The case that matters: a client whose ClientHello is already waiting when the server first
looks at the connection (a central busy just after a restart, its monitors all reconnecting).
Taken up after a plain read, the handshake lost that ClientHello under uvloop and waited
until the client gave up; every client must be served however early it spoke.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import uvloop

from evcharge.devtools import certs
from evcharge.runtime.tcp import OwnedServer
from evcharge.runtime.tls import TlsFiles

T = TypeVar("T")

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    certs.init(folder)
    return folder


class EarlyClient(threading.Thread):
    """A TLS client that sends its ClientHello and says so (`spoke`), then finishes the handshake
    and reads what the server greets it with into `said` (or the error it met)."""

    def __init__(self, port: int, ca: Path) -> None:
        super().__init__(daemon=True)
        self.port, self.ca = port, ca
        self.spoke = threading.Event()
        self.said: list[object] = []

    def run(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=4) as sock:
                self._pump(sock, tls.do_handshake, incoming, outgoing)
                self.said.append(self._pump(sock, lambda: tls.read(5), incoming, outgoing))
        except (OSError, ssl.SSLError) as exc:
            self.said.append(exc)
        finally:
            self.spoke.set()

    def _pump(
        self, sock: socket.socket, call: Callable[[], T], incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> T:
        """`call` on the TLS object, carrying its bytes over the socket until it has an answer."""
        while True:
            try:
                result = call()
                sock.sendall(outgoing.read())  # what it still has to say (its Finished)
                return result
            except ssl.SSLWantReadError:
                pass
            sock.sendall(outgoing.read())
            self.spoke.set()
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("the server closed the connection")
            incoming.write(data)


def serve_one(loop: str, tls: Path, ca: Path) -> tuple[list[object], list[str]]:
    """Start the listener; with its loop not running, let a client connect and send its
    ClientHello; then run the loop until the client is done."""
    refused: list[str] = []

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()

    files = TlsFiles(ca=tls / "ca.pem", cert=tls / "central.pem", key=tls / "central.key")
    server = OwnedServer(
        greet, "test", tls=files.server_context(), on_tls_refused=lambda peer, exc: refused.append(peer)
    )
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        port = runner.run(server.start("127.0.0.1", 0))
        client = EarlyClient(port, ca)
        client.start()
        assert client.spoke.wait(10), "the client never sent its ClientHello"

        async def until_done() -> None:
            try:
                await asyncio.wait_for(asyncio.to_thread(client.join, 10), 15)
            finally:
                await server.close()

        runner.run(until_done())
    return client.said, refused


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_client_that_spoke_before_the_server_looked_is_served(loop: str, tls: Path) -> None:
    said, refused = serve_one(loop, tls, tls / "ca.pem")
    assert said == [b"hello"] and refused == []


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_client_that_refuses_the_certificate_is_told_to_the_server(
    loop: str, tls: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca"
    certs.init(other)
    said, refused = serve_one(loop, tls, other / "ca.pem")
    assert len(said) == 1 and isinstance(said[0], ssl.SSLCertVerificationError)
    assert len(refused) == 1 and refused[0].startswith("127.0.0.1:")
