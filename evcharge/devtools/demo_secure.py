"""`evcharge demo --secure` (`make demo SECURE=1`): the same demo with TLS, SCRAM and signatures on.

What a person would set up by hand, done for them: a local CA and certificates
(`evcharge certs init`, kept beside the runs so the CA is made once), the broker's
SCRAM users, fresh join and operator tokens per run, and a token per driver enrolled
over central's HTTPS API, as `evcharge ctl driver add` does.
"""

from __future__ import annotations

import json
import secrets
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evcharge.devtools import certs
from evcharge.devtools.kafka.secure import BrokerSecurity
from evcharge.devtools.kafka_users import KafkaUsers


@dataclass(frozen=True)
class DemoSecurity:
    tls_dir: Path
    users: KafkaUsers
    join_token: str
    operator_token: str

    @classmethod
    def prepare(cls, tls_dir: Path) -> DemoSecurity:
        tls_dir = tls_dir.resolve()
        if not (tls_dir / "ca.pem").is_file():
            certs.init(tls_dir)
        users = KafkaUsers.load_or_create(tls_dir / KafkaUsers.FILE)
        return cls(tls_dir, users, secrets.token_urlsafe(24), secrets.token_urlsafe(24))

    @property
    def ca(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def broker(self) -> BrokerSecurity:
        return BrokerSecurity(self.tls_dir)

    def _kafka(self, role: str) -> dict[str, Any]:
        return {"ca": self.ca, "kafka_user": role, "kafka_password": self.users.password(role)}

    def central(self) -> dict[str, Any]:
        return {
            "require_auth": True,
            "join_token": self.join_token,
            "operator_token": self.operator_token,
            "cert": self.tls_dir / "central.pem",
            "key": self.tls_dir / "central.key",
            **self._kafka("central"),
        }

    def engine(self) -> dict[str, Any]:
        return {"sign_events": True, **self._kafka("engine")}

    def monitor(self) -> dict[str, Any]:
        return {"join_token": self.join_token, "ca": self.ca}

    def driver(self, token: str) -> dict[str, Any]:
        return {"token": token, **self._kafka("driver")}

    def http_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def enrol(self, url: str, driver_id: str) -> str:
        """The driver's token, from central (POST /drivers with the operator token)."""
        request = urllib.request.Request(
            f"{url}/drivers",
            data=json.dumps({"driver_id": driver_id}).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.operator_token}"},
        )
        with urllib.request.urlopen(request, timeout=5, context=self.http_context()) as response:
            token: str = json.load(response)["token"]
        return token
