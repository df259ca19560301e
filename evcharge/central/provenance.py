"""Whether a record read from Kafka comes from who it says: an engine's event from its CP's
engine, a driver's request from that driver.

Pure. Central asks this before it decides anything on a record, when credentials
are on. The proof is an HMAC over the record's exact payload bytes
(`evcharge.protocol.signing`) with the key central holds for the CP or the driver.
"""

from __future__ import annotations

import hmac

from evcharge.central.state import CentralState
from evcharge.protocol import signing
from evcharge.protocol.messages import DenyCode


def event_forgery(
    state: CentralState, cp_id: str, payload: bytes, headers: signing.Headers | None
) -> str | None:
    """Why an event claiming `cp_id` is not its engine's, or None when its signature holds."""
    key = state.engine_keys.get(cp_id)
    if key is None:
        return f"{cp_id} has no signing key (it never registered with credentials): event refused"
    signature = signing.header(headers, signing.SIGNATURE_HEADER)
    if signature is None:
        return f"an unsigned event claiming {cp_id}: refused"
    if not signing.verify(key, payload, signature):
        return f"an event claiming {cp_id} is not signed with {cp_id}'s key: a forgery"
    return None


def request_unproven(
    state: CentralState, driver_id: str, payload: bytes, headers: signing.Headers | None
) -> tuple[DenyCode, str] | None:
    """Why a request in `driver_id`'s name is refused, or None when it proves it is theirs."""
    key = state.driver_keys.get(driver_id)
    if key is None:
        return DenyCode.UNKNOWN_DRIVER, f"{driver_id} is not enrolled here: ask the operator for a token"
    proof = signing.header(headers, signing.PROOF_HEADER)
    if not signing.verify(key, payload, proof):
        return DenyCode.BAD_PROOF, f"this request does not carry {driver_id}'s proof (a wrong token?)"
    return None


def cp_vouches(state: CentralState, cp_id: str, body: bytes, signature: bytes | None) -> bool:
    """A charge asked over HTTP by the CP it is for: `body` signed with that CP's key. An OCPP
    charger's card (its idTag) is shown at the charger, not proven by a driver's token: the charger
    (its gateway, holding the CP's key) vouches for it, as OCPP's Authorize does."""
    return signing.verify(state.engine_keys.get(cp_id), body, signature)


def token_matches(state: CentralState, driver_id: str, token: str) -> bool:
    """An HTTP caller showing `token` is `driver_id` (its bearer token is the one enrolled)."""
    key = state.driver_keys.get(driver_id)
    return key is not None and hmac.compare_digest(signing.driver_key(token), key)
