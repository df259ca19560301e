"""The OCPP WebSocket endpoint: `ws[s]://HOST:PORT/ocpp/<cp-id>`, the handshake and who gets in.

The handshake decides before any OCPP is spoken: the path names the charger,
the subprotocol names the version (ocpp2.0.1 or ocpp1.6), HTTP Basic says who
it is (`evcharge.gateway.auth`); a charger that may not connect gets an HTTP
error with the reason in its body, and the log says it once. TLS (security
profile 2) is the same server with a certificate. Keepalive pings with a
deadline of seconds drop a silent charger; each accepted connection becomes a
fresh `ChargerSession`.
"""

from __future__ import annotations

import itertools
import logging
import ssl
import weakref
from collections.abc import Sequence
from http import HTTPStatus
from pathlib import Path

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from evcharge.gateway import auth
from evcharge.gateway.charger import ChargerSession, Services
from evcharge.gateway.connection import OcppConnection, Report
from evcharge.gateway.wire import SUBPROTOCOLS, Version

log = logging.getLogger("evcharge.gateway")

PATH_PREFIX = "/ocpp/"
MAX_MESSAGE_BYTES = 256 * 1024
CLOSE_TIMEOUT_S = 0.5


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # OCPP security profile 2
    context.load_cert_chain(cert, key)
    return context


class OcppServer:
    def __init__(self, services: Services) -> None:
        self._s = services
        self._server: Server | None = None
        # How each connection was let in, from its handshake to its handler.
        self._admitted: weakref.WeakKeyDictionary[ServerConnection, tuple[str, int]] = (
            weakref.WeakKeyDictionary()
        )
        self._arrivals = itertools.count(1)
        self.port = 0

    async def start(self) -> int:
        s = self._s.settings
        self._server = await serve(
            self._serve,
            s.host,
            s.port,
            subprotocols=[Subprotocol(v.value) for v in SUBPROTOCOLS],
            select_subprotocol=self._select_subprotocol,
            process_request=self._admit,
            ping_interval=s.ping_interval_s,
            ping_timeout=s.ping_timeout_s,
            # A charger that misses its pong gets this long for the closing handshake: the time
            # to DISCONNECTED is ping interval + ping timeout + this, within central's 3 s.
            close_timeout=CLOSE_TIMEOUT_S,
            open_timeout=10,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,  # OCPP frames are small; deflate costs memory per connection
            ssl=tls_context(s.cert, s.key) if s.cert and s.key else None,
            server_header=None,
            logger=logging.getLogger("evcharge.gateway.websockets"),
        )
        self.port = self._server.sockets[0].getsockname()[1] if self._server.sockets else s.port
        return self.port

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=False)

    async def close(self) -> None:
        """Idempotent: stop accepting and close every connection (1001, going away)."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        for version in SUBPROTOCOLS:
            if version.value in offered:
                return Subprotocol(version.value)
        if not offered and self._s.settings.lenient:
            return None  # a known quirk: taken as ocpp1.6 (see _serve)
        wanted = " or ".join(v.value for v in SUBPROTOCOLS)
        raise NegotiationError(f"offer the subprotocol {wanted} (offered: {', '.join(offered) or 'none'})")

    async def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        arrived = next(self._arrivals)  # before any wait: the order the charger's sockets came in
        cp_id = _cp_id(request.path)
        if cp_id is None:
            return _refuse(
                connection, HTTPStatus.NOT_FOUND, f"the OCPP endpoint is {PATH_PREFIX}<charger id>"
            )
        store = self._s.store
        record = await store.charger(cp_id)
        verdict = auth.admit(
            cp_id,
            auth.basic_credentials(request.headers.get("Authorization")),
            record.credentials if record else None,
            self._s.settings.join_token,
        )
        if isinstance(verdict, auth.Denied):
            log.warning(
                "refused a connection as %s from %s: %s", cp_id[:70], _peer(connection), verdict.reason
            )
            return _refuse(connection, HTTPStatus(verdict.status), verdict.reason)
        self._admitted[connection] = (verdict.how, arrived)
        return None

    async def _serve(self, socket: ServerConnection) -> None:
        s = self._s
        cp_id = _cp_id(socket.request.path if socket.request else "") or ""
        version = Version(socket.subprotocol) if socket.subprotocol else Version.V16
        admitted, arrived = self._admitted.pop(socket, ("open", 0))
        record = await s.store.join(cp_id)
        conn = OcppConnection(
            socket,
            cp_id,
            version,
            metrics=s.metrics,
            lenient=s.settings.lenient,
            report=self._reporter(cp_id, version),
            call_timeout_s=s.settings.call_timeout_s,
            arrived=arrived,
        )
        session = ChargerSession(conn, record, admitted, s)
        log.debug("%s connected from %s (OCPP %s)", cp_id, _peer(socket), version.label)
        await session.run()

    def _reporter(self, cp_id: str, version: Version) -> Report:
        recorder = self._s.recorder

        async def report(frame: str, reason: str, action: str) -> None:
            await recorder.dead_letter(cp_id, f"ocpp:{version.value}", frame, reason)

        return report


def _cp_id(path: str) -> str | None:
    if not path.startswith(PATH_PREFIX):
        return None
    cp_id = path[len(PATH_PREFIX) :].split("?", 1)[0].strip("/")
    return cp_id or None


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)


def _refuse(connection: ServerConnection, status: HTTPStatus, reason: str) -> Response:
    response = connection.respond(status, reason + "\n")
    if status == HTTPStatus.UNAUTHORIZED:
        response.headers["WWW-Authenticate"] = 'Basic realm="evcharge OCPP", charset="UTF-8"'
    return response
