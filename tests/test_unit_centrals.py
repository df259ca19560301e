"""Which central a monitor-protocol client dials: the list in turn, and the leader a standby names."""

from __future__ import annotations

import pytest

from evcharge.errors import Refused
from evcharge.runtime.centrals import Centrals

A, B, C = ("10.0.0.1", 7000), ("10.0.0.2", 7000), ("10.0.0.3", 7001)


def test_the_list_is_walked_in_turn() -> None:
    centrals = Centrals((A, B, C))
    assert [centrals.next() for _ in range(4)] == [A, B, C, A]
    assert str(centrals) == "10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7001"


def test_a_leader_named_by_a_standby_is_dialled_next_once_then_the_turn_goes_on() -> None:
    centrals = Centrals((A, B))
    assert centrals.next() == A
    centrals.refused(Refused("not_leader", "this central is a standby", leader="10.0.0.9:7005"))
    assert [centrals.next() for _ in range(3)] == [("10.0.0.9", 7005), B, A]


@pytest.mark.parametrize(
    "refusal",
    [
        Refused("not_leader", "a standby that knows no leader"),
        Refused("not_leader", "garbled", leader="no-port"),
        Refused("unavailable", "cannot record now", leader="10.0.0.9:7005"),
        Refused("bad_secret", "wrong secret"),
    ],
)
def test_other_refusals_leave_the_turn_alone(refusal: Refused) -> None:
    centrals = Centrals((A, B))
    centrals.next()
    centrals.refused(refusal)
    assert centrals.next() == B


def test_an_ipv6_leader_is_unbracketed() -> None:
    centrals = Centrals((A,))
    centrals.refused(Refused("not_leader", "standby", leader="[::1]:7000"))
    assert centrals.next() == ("::1", 7000)


def test_no_address_is_an_error() -> None:
    with pytest.raises(ValueError):
        Centrals(())
