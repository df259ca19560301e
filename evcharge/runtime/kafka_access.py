"""How a role reaches Kafka: the bootstrap servers, and who it is there (SASL/SCRAM over TLS).

Light on purpose (no Kafka client imported), so settings can build it. Every
client `evcharge.runtime.kafka` creates takes its options from here.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from dataclasses import dataclass
from typing import Any

from evcharge.errors import ConfigError
from evcharge.runtime.tls import TlsFiles, TlsRefused, is_refusal, refusal_text

SCRAM_MECHANISM = "SCRAM-SHA-512"


class KafkaRefused(ConfigError):
    """The broker refused who this role says it is (SASL): another try would be refused too."""


@dataclass(frozen=True)
class KafkaAccess:
    bootstrap: str
    user: str | None = None
    password: str | None = None
    tls: TlsFiles | None = None

    def __str__(self) -> str:
        return self.bootstrap

    @property
    def secure(self) -> bool:
        return self.user is not None

    @functools.cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.client_context() if self.tls is not None else None

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client: producer, consumer or admin."""
        if self.user is None:
            return {"bootstrap_servers": self.bootstrap}
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": self.user,
            "sasl_plain_password": self.password,
            "ssl_context": self.ssl_context,
        }

    async def check(self, timeout_s: float = 5.0) -> None:
        """Refuse at once a broker whose certificate does not verify (TlsRefused), or that refuses
        this user's password (KafkaRefused): no retry mends either.

        The Kafka client folds both into "cannot connect" and retries for ever, so a role
        asks once, first, on a connection of its own. A broker that does not answer is
        not a refusal: the role's own retries wait for it.
        """
        if self.user is None:
            return
        from aiokafka.conn import create_conn
        from aiokafka.errors import SaslAuthenticationFailed

        options = self.client_options()
        del options["bootstrap_servers"]
        for address in filter(None, (part.strip() for part in self.bootstrap.split(","))):
            host, _, port = address.rpartition(":")
            if not port.isdigit():
                continue
            host = host.strip("[]")
            try:
                async with asyncio.timeout(timeout_s):
                    connection = await create_conn(host, int(port), **options)
                connection.close()
                return
            except SaslAuthenticationFailed:
                raise KafkaRefused(
                    f"Kafka at {address} refused the user {self.user!r}: wrong password, or no such user"
                ) from None
            except Exception as exc:
                cause = exc.__cause__ or exc.__context__ or exc
                for candidate in (exc, cause):
                    if is_refusal(candidate):
                        raise TlsRefused(refusal_text(candidate, f"Kafka at {address}")) from None


Kafka = str | KafkaAccess


def access(kafka: Kafka) -> KafkaAccess:
    return kafka if isinstance(kafka, KafkaAccess) else KafkaAccess(kafka)
