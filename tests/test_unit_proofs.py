"""Who wrote a record, decided in-process: the key issued to a CP at join, an event's signature,
a driver's proof, and what central decides on a record that does not prove it."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from evcharge.central import decisions, facts, provenance
from evcharge.central.credentials import hash_secret
from evcharge.central.decisions import Rules
from evcharge.central.state import CentralState
from evcharge.devtools import certs
from evcharge.protocol import signing
from evcharge.protocol.messages import ChargeRequest, DenyCode, StopRequest
from evcharge.runtime.tls import TlsFiles, is_refusal
from tests.test_unit_decisions import NOW, SECRET, Clock, applied, charge, joined, register_frame

RULES = Rules(join_token="join")


def join_with_credentials(state: CentralState, clock: Clock, cp_id: str, stored: str | None = None) -> str:
    frame = register_frame(cp_id, token="join", secret=SECRET)
    decision = decisions.register(
        state, frame, "p", stored_hash=stored, rules=RULES, now=NOW, new_id=clock.new_id
    )
    assert decision.refusal is None and decision.result is not None
    applied(state, decision.change)
    return decision.result


def test_a_cp_gets_its_signing_key_at_its_first_join_and_the_same_one_ever_after() -> None:
    state, clock = CentralState(), Clock()
    first = join_with_credentials(state, clock, "CP-1")
    again = join_with_credentials(state, clock, "CP-1", stored=hash_secret(SECRET))
    other = join_with_credentials(state, clock, "CP-2")
    assert first == again and len(bytes.fromhex(first)) == signing.KEY_BYTES
    assert other != first
    joined_plain = CentralState()
    joined(joined_plain, Clock())
    assert joined_plain.engine_keys == {}, "without credentials no key is issued"


def test_an_event_must_carry_the_signature_of_the_cp_it_claims() -> None:
    state = CentralState(engine_keys={"CP-1": signing.new_key(), "CP-2": signing.new_key()})
    payload = b'{"type":"meter","cp_id":"CP-2"}'
    own = [(signing.SIGNATURE_HEADER, signing.sign(state.engine_keys["CP-2"], payload))]
    insider = [(signing.SIGNATURE_HEADER, signing.sign(state.engine_keys["CP-1"], payload))]
    assert provenance.event_forgery(state, "CP-2", payload, own) is None
    assert "a forgery" in (provenance.event_forgery(state, "CP-2", payload, insider) or "")
    assert "unsigned" in (provenance.event_forgery(state, "CP-2", payload, []) or "")
    assert "no signing key" in (provenance.event_forgery(state, "CP-9", payload, own) or "")
    # One byte changed after signing (a meter reading doubled on the way) is a forgery too.
    altered = payload.replace(b"CP-2", b"CP-3")
    assert provenance.event_forgery(state, "CP-2", altered, own) is not None


def test_a_charge_over_http_is_vouched_for_only_by_the_cp_it_is_for() -> None:
    """A card shown at an OCPP charger: its gateway signs the body with that charger's key."""
    state = CentralState(engine_keys={"CP-1": signing.new_key(), "CP-2": signing.new_key()})
    body = b'{"driver_id": "card-1", "cp_id": "CP-2"}'
    assert provenance.cp_vouches(state, "CP-2", body, signing.sign(state.engine_keys["CP-2"], body))
    assert not provenance.cp_vouches(state, "CP-2", body, signing.sign(state.engine_keys["CP-1"], body))
    assert not provenance.cp_vouches(state, "CP-2", body, None)
    assert not provenance.cp_vouches(state, "CP-9", body, signing.sign(state.engine_keys["CP-2"], body))
    other = body.replace(b"card-1", b"card-2")
    assert not provenance.cp_vouches(state, "CP-2", other, signing.sign(state.engine_keys["CP-2"], body))


def test_a_request_must_prove_its_driver_and_unknown_drivers_are_told_to_enrol() -> None:
    alice, bob = signing.new_token(), signing.new_token()
    state = CentralState(driver_keys={"alice": signing.driver_key(alice), "bob": signing.driver_key(bob)})
    payload = b'{"type":"charge_request","driver_id":"alice"}'

    def proof(token: str) -> list[tuple[str, bytes]]:
        return [(signing.PROOF_HEADER, signing.sign(signing.driver_key(token), payload))]

    assert provenance.request_unproven(state, "alice", payload, proof(alice)) is None
    code, why = provenance.request_unproven(state, "alice", payload, proof(bob)) or ("", "")
    assert code is DenyCode.BAD_PROOF and "alice" in why
    code, why = provenance.request_unproven(state, "mallory", payload, proof(bob)) or ("", "")
    assert code is DenyCode.UNKNOWN_DRIVER and "ask the operator" in why
    assert provenance.token_matches(state, "alice", alice)
    assert not provenance.token_matches(state, "alice", bob)
    assert signing.driver_key(alice) != alice, "central keeps a key derived from the token, not the token"


def test_an_unproven_request_is_denied_with_its_reason_and_an_unproven_stop_stops_nothing() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    unproven = (DenyCode.BAD_PROOF, "this request does not carry alice's proof")
    decision = decisions.charge(
        state,
        ChargeRequest(driver_id="alice", cp_id="CP-1", request_id="r-1"),
        earlier=None,
        waited_s=0.0,
        rules=Rules(),
        now=NOW,
        new_id=clock.new_id,
        unproven=unproven,
    )
    assert decision.result is not None and decision.result.code == DenyCode.BAD_PROOF.value
    assert not state.sessions
    accepted = charge(state, clock)
    session_id = accepted.result.session_id
    change = decisions.stop_request(
        state,
        StopRequest(driver_id="alice", session_id=session_id),
        now=NOW,
        new_id=clock.new_id,
        unproven=unproven,
    )
    (denied,) = change.messages
    assert getattr(denied, "code", None) is DenyCode.BAD_PROOF
    (asked,) = [f for f in change.facts if isinstance(f, facts.StopAsked)]
    assert asked.refused


def test_enrolling_a_driver_keeps_its_key_and_says_when_a_token_is_renewed() -> None:
    state = CentralState()
    first = decisions.enrol_driver(state, "alice", "k1", by="http", peer="127.0.0.1")
    applied(state, first.change)
    renewed = decisions.enrol_driver(state, "alice", "k2", by="http")
    applied(state, renewed.change)
    assert state.driver_keys == {"alice": "k2"}
    assert [f.again for f in (*first.change.facts, *renewed.change.facts)] == [False, True]


def test_certificates_of_another_ca_expired_or_for_another_host_do_not_verify(tmp_path: Path) -> None:
    certs.init(tmp_path / "ours")
    certs.init(tmp_path / "theirs")
    ours = certs.LocalCa(tmp_path / "ours")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    expired = ours.issue("expired", days=1, valid_from=past)
    elsewhere = ours.issue("elsewhere", ("other.example",))
    for key in ("central.key", "kafka.key", "client.key", "ca.key"):
        assert (tmp_path / "ours" / key).stat().st_mode & 0o077 == 0

    def verify(ca: Path, cert: Path, host: str) -> str | None:
        context = TlsFiles(ca=ca).client_context()
        assert context is not None
        inbound, outbound = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = context.wrap_bio(inbound, outbound, server_hostname=host)
        server_context = TlsFiles(cert=cert, key=cert.with_suffix(".key")).server_context()
        assert server_context is not None
        s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        server = server_context.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):
            for side in (client, server):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    if side is client:
                        assert is_refusal(exc)
                        return str(exc.verify_message if hasattr(exc, "verify_message") else exc)
                    return f"server: {exc}"
            s_in.write(outbound.read())
            inbound.write(s_out.read())
        return None

    good = tmp_path / "ours" / "central.pem"
    assert verify(tmp_path / "ours" / "ca.pem", good, "127.0.0.1") is None
    # Every local CA has the same name: another one's is found as the issuer, and its signature fails.
    assert verify(tmp_path / "theirs" / "ca.pem", good, "127.0.0.1") == "certificate signature failure"
    assert "expired" in (verify(tmp_path / "ours" / "ca.pem", expired.cert, "localhost") or "")
    assert "mismatch" in (verify(tmp_path / "ours" / "ca.pem", elsewhere.cert, "localhost") or "").lower()
