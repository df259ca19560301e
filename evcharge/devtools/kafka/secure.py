"""The project's broker with security on (`evcharge kafka start --secure`): a SASL_SSL listener,
SCRAM users made with the broker's own storage tool, and the StandardAuthorizer's ACLs.

    clients   SASL_SSL on the broker port: TLS (the certificate of `certs init`), then
              SCRAM-SHA-512 as one of the users in <tls dir>/kafka-users.json
    inside    the KRaft controller listener stays PLAINTEXT, bound to 127.0.0.1 only: SCRAM
              cannot authenticate the controller (its credentials live in the metadata it
              serves), so the broker host itself is trusted; nothing else listens in plain

The users are added when the storage is formatted (`kafka-storage format
--add-scram`); the ACLs (`acls.py`) once the broker answers, by the `admin` user.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from evcharge.devtools.kafka.acls import ALLOW, role_acls
from evcharge.devtools.kafka_users import ROLES, KafkaUsers
from evcharge.errors import BrokerError
from evcharge.runtime.kafka_access import SCRAM_MECHANISM, KafkaAccess
from evcharge.runtime.tls import TlsFiles

LISTENER = "SASL_SSL"
ADMIN = "admin"


@dataclass(frozen=True)
class BrokerSecurity:
    tls_dir: Path

    def __post_init__(self) -> None:
        # The broker's JVM runs in its data dir: every path it is given must be absolute.
        object.__setattr__(self, "tls_dir", Path(self.tls_dir).expanduser().resolve())
        missing = [p for p in (self.ca, self.cert, self.key) if not p.is_file()]
        if missing:
            raise BrokerError(
                f"{missing[0]} is missing: run `evcharge certs init --dir {self.tls_dir}` first"
            )

    @property
    def ca(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.tls_dir / "kafka.pem"

    @property
    def key(self) -> Path:
        return self.tls_dir / "kafka.key"

    @property
    def users(self) -> KafkaUsers:
        return KafkaUsers.load_or_create(self.tls_dir / KafkaUsers.FILE)

    def access(self, bootstrap: str, role: str = ADMIN) -> KafkaAccess:
        """How `role` reaches this broker (the admin for readiness and ACLs)."""
        return KafkaAccess(bootstrap, role, self.users.password(role), TlsFiles(ca=self.ca))

    def keystore(self, data_dir: Path) -> Path:
        """Kafka reads a PEM keystore as the key followed by its certificate, in one file."""
        path = data_dir / "kafka-keystore.pem"
        path.write_text(self.key.read_text() + self.cert.read_text())
        path.chmod(0o600)
        return path

    def properties(self, host: str, port: int, controller: str, data_dir: Path) -> dict[str, str]:
        admin = self.users.password(ADMIN)
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN}" password="{admin}";'
        )
        return {
            "listeners": f"{LISTENER}://{host}:{port},CONTROLLER://{controller}",
            "advertised.listeners": f"{LISTENER}://{host}:{port}",
            "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{LISTENER}:{LISTENER}",
            "inter.broker.listener.name": LISTENER,
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            f"listener.name.{LISTENER.lower()}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore(data_dir)),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # The admin (ACLs) and the controller link (PLAINTEXT, loopback only) are super users.
            "super.users": f"User:{ADMIN};User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
        }

    def format_args(self) -> list[str]:
        users = self.users
        args = []
        for role in ROLES:
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={role},password={users.password(role)}]"]
        return args

    def grant(self, bootstrap: str, timeout_s: float = 30.0) -> int:
        """Create every role's ACLs (idempotent: the same ACL twice is one); returns how many."""
        return asyncio.run(_create_acls(self.access(bootstrap), timeout_s))


async def _create_acls(admin_access: KafkaAccess, timeout_s: float) -> int:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.admin import CreateAclsRequest

    acls = role_acls()
    admin = AIOKafkaAdminClient(**admin_access.client_options(), request_timeout_ms=10_000)
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            for acl in acls:
                request = CreateAclsRequest(
                    acl.resource, acl.name, acl.pattern, f"User:{acl.principal}", "*", acl.operation, ALLOW
                )
                response = await admin._send_request(request)
                for result in response.creation_responses:
                    if result[0] != 0:
                        raise BrokerError(f"the broker refused the ACL {acl}: error {result[0]} {result[1]}")
    finally:
        await admin.close()
    return len(acls)
