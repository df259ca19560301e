"""Who may register a CP: the join token once, the CP's own secret ever after."""

from __future__ import annotations

from evcharge.central.credentials import Admit, Deny, check_registration, hash_secret, new_secret


def check(token=None, secret=None, stored=None):
    return check_registration(
        "CP-1", join_token="join", presented_token=token, presented_secret=secret, stored_hash=stored
    )


SECRET = new_secret()


def test_a_new_cp_with_the_join_token_is_admitted_and_only_its_secret_s_hash_is_kept() -> None:
    decision = check(token="join", secret=SECRET)
    assert decision == Admit(store_hash=hash_secret(SECRET))
    assert SECRET not in decision.store_hash


def test_a_joining_monitor_must_bring_a_strong_secret() -> None:
    for secret in (None, "", "short"):
        decision = check(token="join", secret=secret)
        assert isinstance(decision, Deny) and decision.code == "weak_secret"
    assert len(new_secret()) >= 40 and new_secret() != new_secret()


def test_a_new_cp_without_or_with_a_wrong_token_is_refused() -> None:
    for token in (None, "", "joi", "join "):
        decision = check(token=token, secret=SECRET)
        assert isinstance(decision, Deny) and decision.code == "bad_token"
        assert "CP-1" in decision.reason and "join token" in decision.reason


def test_a_known_cp_needs_its_own_secret_and_the_join_token_is_not_enough() -> None:
    stored = hash_secret("s3cret")
    assert check(secret="s3cret", stored=stored) == Admit()
    for token, secret in (("join", None), ("join", "guess"), (None, None), (None, "s3cret ")):
        decision = check(token=token, secret=secret, stored=stored)
        assert isinstance(decision, Deny) and decision.code == "bad_secret"


def test_only_a_hash_of_the_secret_is_kept() -> None:
    assert hash_secret("s3cret") != "s3cret" and len(hash_secret("s3cret")) == 64
