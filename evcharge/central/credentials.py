"""Who may register a CP: a join token shared by the operator, then a secret per CP.

Pure. A monitor chooses its CP's secret and keeps it before it first registers;
it joins by showing the operator's join token with that secret, and central keeps
only the secret's hash. From then on only that secret registers the CP id, so
knowing the join token is not enough to impersonate a CP that already joined,
and an answer lost on the way cannot lock a CP out: it simply registers again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

MIN_SECRET_CHARS = 32


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Admit:
    """Registration allowed; `store_hash` is the hash of a secret to keep for a CP that just joined."""

    store_hash: str | None = None


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
    if presented_token is None or not hmac.compare_digest(presented_token.encode(), join_token.encode()):
        return Deny("bad_token", f"{cp_id} is new here: registering needs the operator's join token")
    if presented_secret is None or len(presented_secret) < MIN_SECRET_CHARS:
        return Deny(
            "weak_secret", f"{cp_id}: a joining monitor must bring a secret of {MIN_SECRET_CHARS}+ characters"
        )
    return Admit(store_hash=hash_secret(presented_secret))
