"""Who may register a CP: a join token shared by the operator, then a secret per CP.

Pure. A CP that joins for the first time shows the operator's join token and is
given its own secret; from then on only that secret registers the CP id, so
knowing the join token is not enough to impersonate a CP that already joined.
Only a hash of each secret is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Admit:
    """Registration allowed; `issue` is a new secret to hand to the monitor, if any."""

    issue: str | None = None


@dataclass(frozen=True)
class Deny:
    code: str
    reason: str


def check_registration(
    cp_id: str,
    *,
    join_token: str,
    presented_token: str | None,
    presented_secret: str | None,
    stored_hash: str | None,
) -> Admit | Deny:
    if stored_hash is not None:
        if presented_secret is not None and hmac.compare_digest(hash_secret(presented_secret), stored_hash):
            return Admit()
        return Deny(
            "bad_secret",
            f"{cp_id} has joined before and must register with its own secret "
            "(kept in the monitor's state dir); the join token alone is not enough",
        )
    if presented_token is not None and hmac.compare_digest(presented_token, join_token):
        return Admit(issue=new_secret())
    return Deny("bad_token", f"{cp_id} is new here: registering needs the operator's join token")
