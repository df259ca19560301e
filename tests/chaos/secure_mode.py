"""The chaos suite with everything secure (`make chaos-test SECURE=1`, or EVCHARGE_CHAOS_SECURE=1):
the same scenarios on a secure broker (SASL_SSL, a SCRAM user per role, ACLs), central's ports
and HTTP API on TLS, engines signing their events, drivers enrolled and proving who they are.

The broker of a secure run is restarted by the scenarios exactly as a plain one (`kill`, then
`start` of the same `LocalBroker`): its storage, SCRAM users and ACLs are kept, so it comes back
the same secure broker. The partition scenarios' hosts get certificates naming their
namespace addresses, so they run secure too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evcharge.devtools import certs
from evcharge.devtools.kafka import LocalBroker
from evcharge.devtools.kafka.secure import BrokerSecurity
from evcharge.devtools.system import Credentials

SECURE = os.environ.get("EVCHARGE_CHAOS_SECURE", "").strip() not in ("", "0")
MODE = "secure" if SECURE else "plain"
DESCRIPTION = (
    "secure: TLS on central's monitor port and HTTP API and on Kafka, SCRAM users per role with ACLs, "
    "signed engine events, enrolled drivers, proofs required"
    if SECURE
    else "plain: no TLS, no Kafka authentication, no signatures, drivers not enrolled"
)

JOIN_TOKEN = "chaos-join-token"
OPERATOR_TOKEN = "chaos-operator-token"


@dataclass(frozen=True)
class SecureBroker:
    """A secure broker, not started yet, and the credentials every process reaches it with."""

    broker: LocalBroker
    credentials: Credentials


def secure_broker(
    tls_dir: Path, data_dir: Path, hosts: Sequence[str] = certs.DEFAULT_HOSTS, **broker: Any
) -> SecureBroker:
    """`certs init` in `tls_dir` for `hosts` (every address a server is reached at), and a broker
    with security on over `data_dir`; `broker` are LocalBroker's other fields."""
    certs.init(tls_dir, hosts)
    security = BrokerSecurity(tls_dir)
    local = LocalBroker(data_dir=data_dir, security=security, **broker)
    credentials = Credentials(JOIN_TOKEN, OPERATOR_TOKEN, tls_dir=tls_dir, kafka_users=security.users)
    return SecureBroker(local, credentials)
