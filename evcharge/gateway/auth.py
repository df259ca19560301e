"""Who may connect as which charger: OCPP security profile 1 (HTTP Basic) with evcharge's join token.

Pure. A charger the gateway has never seen shows the operator's join token as
its password; the gateway then sets a password of its own on it and keeps only
its SHA-256. The new password counts from the moment the gateway chose it (kept
as `pending` until the charger confirms it), so an answer lost on the way cannot
lock the charger out; once the charger has connected with it, it is the only
one accepted and the join token no longer opens that charger id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from evcharge.protocol.messages import CP_ID_PATTERN, DRIVER_ID_PATTERN

CP_ID = re.compile(CP_ID_PATTERN)  # a charger id is central's CP id
DRIVER_ID = re.compile(DRIVER_ID_PATTERN)  # and a card's id is a driver id
PASSWORD_BYTES = 20  # 40 hex characters: the longest AuthorizationKey OCPP 1.6 allows


@dataclass(frozen=True)
class Credentials:
    password_hash: str | None = None  # the password the charger confirmed
    pending_hash: str | None = None  # the one set on it, not yet seen in use


@dataclass(frozen=True)
class Admitted:
    how: str  # "open" (no auth), "join" (a new charger), "password", "pending" (first use of a new one)


@dataclass(frozen=True)
class Denied:
    status: int
    reason: str


def new_password() -> str:
    return secrets.token_hex(PASSWORD_BYTES)


def hash_password(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic ...` header; None if absent or not Basic."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def admit(
    cp_id: str, presented: tuple[str, str] | None, stored: Credentials | None, join_token: str | None
) -> Admitted | Denied:
    """Let a charger in, or say why not (the HTTP status and a reason for the charger and the log)."""
    if not CP_ID.match(cp_id):
        return Denied(404, f"{cp_id[:70]!r} is not a valid charger id")
    if join_token is None:
        return Admitted("open")
    if presented is None:
        return Denied(401, f"charger {cp_id} must authenticate with HTTP Basic (OCPP security profile 1)")
    user, password = presented
    if user != cp_id:
        return Denied(401, f"HTTP Basic user {user[:70]!r} is not the charger id {cp_id}")
    digest = hash_password(password)
    if stored is not None and stored.password_hash is not None:
        if hmac.compare_digest(digest, stored.password_hash):
            return Admitted("password")
        if stored.pending_hash is not None and hmac.compare_digest(digest, stored.pending_hash):
            return Admitted("pending")
        return Denied(401, f"wrong password for charger {cp_id} (it has a password of its own)")
    if stored is not None and stored.pending_hash and hmac.compare_digest(digest, stored.pending_hash):
        return Admitted("pending")
    if hmac.compare_digest(password.encode(), join_token.encode()):
        return Admitted("join")
    return Denied(401, f"charger {cp_id} is unknown here: a new charger joins with the operator's join token")
