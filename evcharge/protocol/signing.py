"""Proof of who wrote a Kafka record: an HMAC-SHA256 over its exact payload bytes, in a header.

Pure. Kafka cannot tell a consumer who produced a record, and one Kafka credential
is shared by every engine (and one by every driver): the proof is what tells
central that CP-001's engine wrote an event claiming CP-001, or that driver-alice
asked for a charge in her name. Each engine signs with the key central issued to
its CP at join; each driver with a key derived from the token the operator enrolled
it with. Central keeps both keys and checks before it applies anything. A replayed
record carries a valid proof and changes nothing: events are deduplicated by seq,
requests by request id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

SIGNATURE_HEADER = "evcharge-sig"  # an engine's event
PROOF_HEADER = "evcharge-proof"  # a driver's request
KEY_BYTES = 32

Headers = Sequence[tuple[str, bytes]]


def new_key() -> str:
    """A fresh HMAC key, as hex text (what central stores and a CP keeps)."""
    return secrets.token_hex(KEY_BYTES)


def new_token() -> str:
    """A driver's token, shown once to the operator who enrols it."""
    return secrets.token_urlsafe(KEY_BYTES)


def driver_key(token: str) -> str:
    """The HMAC key a driver's token stands for; central keeps this, never the token."""
    return hashlib.sha256(b"evcharge driver proof key\0" + token.encode()).hexdigest()


def sign(key_hex: str, payload: bytes) -> bytes:
    return hmac.new(bytes.fromhex(key_hex), payload, hashlib.sha256).hexdigest().encode()


def header(headers: Headers | None, name: str) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return bytes(value)
    return None


def verify(key_hex: str | None, payload: bytes, signature: bytes | None) -> bool:
    """True when `signature` is `key`'s over exactly `payload`; never for a missing key or signature."""
    if not key_hex or not signature:
        return False
    return hmac.compare_digest(sign(key_hex, payload), signature)
