"""Which central a monitor-protocol client registers with: one round over the list, the leader first."""

from __future__ import annotations

import asyncio

import pytest

from evcharge.errors import Refused
from evcharge.runtime.centrals import Address, Centrals, named_leader
from evcharge.runtime.retry import is_retriable

A, B, C = ("10.0.0.1", 7000), ("10.0.0.2", 7000), ("10.0.0.3", 7001)
NEW = ("10.0.0.9", 7005)


def retriable(exc: BaseException) -> bool:
    return exc.code in Refused.TRANSIENT if isinstance(exc, Refused) else is_retriable(exc)


class Cluster:
    """What each address answers a registration with; every dial is recorded."""

    def __init__(self, answers: dict[Address, BaseException | None]) -> None:
        self.answers = answers
        self.dialled: list[Address] = []

    async def register(self, host: str, port: int) -> str:
        self.dialled.append((host, port))
        answer = self.answers.get((host, port), ConnectionRefusedError(111, "Connection refused"))
        if answer is not None:
            raise answer
        return f"registered at {host}:{port}"


def standby(leader: Address | None) -> Refused:
    return Refused(
        "not_leader", "this central is a standby", leader=f"{leader[0]}:{leader[1]}" if leader else None
    )


def reach(centrals: Centrals, cluster: Cluster) -> tuple[str, Address]:
    return asyncio.run(centrals.reach(cluster.register, retriable))


def test_a_round_walks_the_list_until_a_central_takes_the_registration() -> None:
    cluster = Cluster({A: None})
    centrals = Centrals((C, B, A))
    assert reach(centrals, cluster) == ("registered at 10.0.0.1:7000", A)
    assert cluster.dialled == [C, B, A]
    assert str(centrals) == "10.0.0.3:7001,10.0.0.2:7000,10.0.0.1:7000"


def test_the_central_that_took_it_last_is_dialled_first_next_time() -> None:
    cluster = Cluster({B: None})
    centrals = Centrals((A, B, C))
    reach(centrals, cluster)
    cluster.dialled.clear()
    reach(centrals, cluster)
    assert cluster.dialled == [B]


def test_the_leader_a_standby_names_is_dialled_next_even_when_not_on_the_list() -> None:
    cluster = Cluster({A: standby(NEW), NEW: None})
    assert reach(Centrals((A, B)), cluster) == ("registered at 10.0.0.9:7005", NEW)
    assert cluster.dialled == [A, NEW]


def test_a_dead_leader_that_standbys_still_name_is_dialled_once_per_round() -> None:
    # The leader was killed; its lease has not run out, so both standbys still name it.
    cluster = Cluster({B: standby(A), C: standby(A)})
    centrals = Centrals((A, B, C))
    with pytest.raises(ConnectionRefusedError):
        reach(centrals, cluster)
    assert cluster.dialled == [A, B, C]
    cluster.answers[C] = None  # C took over: the very next round reaches it, the dead one dialled last
    cluster.dialled.clear()
    assert reach(centrals, cluster)[1] == C
    assert cluster.dialled == [B, C]


def test_a_refusal_from_the_leader_is_raised_rather_than_a_standbys_pointer() -> None:
    busy = Refused("unavailable", "central cannot record now")
    cluster = Cluster({A: standby(B), B: busy})
    with pytest.raises(Refused) as raised:
        reach(Centrals((A,)), cluster)
    assert raised.value is busy


def test_a_refusal_no_retry_changes_ends_the_round_at_once() -> None:
    cluster = Cluster({A: Refused("bad_secret", "wrong secret"), B: None})
    with pytest.raises(Refused, match="wrong secret"):
        reach(Centrals((A, B)), cluster)
    assert cluster.dialled == [A]


@pytest.mark.parametrize(
    ("refusal", "leader"),
    [
        (standby(NEW), NEW),
        (Refused("not_leader", "standby", leader="[::1]:7000"), ("::1", 7000)),
        (Refused("not_leader", "a standby that knows no leader"), None),
        (Refused("not_leader", "garbled", leader="no-port"), None),
        (Refused("unavailable", "cannot record now", leader="10.0.0.9:7005"), None),
        (ConnectionRefusedError(), None),
    ],
)
def test_only_a_standbys_well_formed_pointer_names_a_leader(
    refusal: BaseException, leader: Address | None
) -> None:
    assert named_leader(refusal) == leader


def test_no_address_is_an_error() -> None:
    with pytest.raises(ValueError):
        Centrals(())


def test_a_central_that_did_not_answer_is_dialled_last_in_the_next_round() -> None:
    # The leader A is cut off (its dials time out); B, a standby, still names it until its lease runs out.
    cluster = Cluster({A: TimeoutError("connect timed out"), B: standby(A)})
    centrals = Centrals((A, B))
    with pytest.raises(TimeoutError):
        reach(centrals, cluster)
    assert cluster.dialled == [A, B]
    cluster.answers[B] = None  # B took over
    cluster.dialled.clear()
    assert reach(centrals, cluster)[1] == B
    assert cluster.dialled == [B], "the silent one is not dialled first again"


def test_after_its_link_broke_the_last_leader_is_dialled_last() -> None:
    cluster = Cluster({A: None})
    centrals = Centrals((A, B))
    reach(centrals, cluster)
    centrals.lost(A)  # its heartbeats went unanswered: cut off, perhaps
    assert centrals.round() == [B, A]
