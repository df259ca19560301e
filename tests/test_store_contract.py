"""The one contract central's store keeps, run against both stores: SQLite (the embedded default)
and PostgreSQL (a real server the test session starts).

A decision and the messages it owes are written together or not at all; the
outbox gives them back in the order decided; reads see what was committed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from evcharge.central.leadership import Fenced, Holder
from evcharge.central.ledger import Session, SessionState
from evcharge.central.state import Change, CpRecord, Outcome, RequestOutcome
from evcharge.central.store import CentralStore, SessionQuery, open_store
from evcharge.central.store.sqlite import SqliteStore
from evcharge.errors import ConfigError, StoreUnavailable
from evcharge.protocol.messages import CP_COMMANDS, DRIVER_UPDATES, DenyCode, EndReason, RequestDenied, StopCp
from evcharge.protocol.topics import Topic
from evcharge.runtime.ports import free_port


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request, tmp_path) -> AsyncIterator[CentralStore]:
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'central.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = await open_store(url)
    opened.reopen_url = url  # type: ignore[attr-defined]
    try:
        yield opened
    finally:
        await opened.close()


def record(cp_id: str = "CP-1", **kw) -> CpRecord:
    base = {"cp_id": cp_id, "location": "Elche", "price": 300_000, "max_w": 22_000, "stopped": False,
            "registered_at": 10.0}  # fmt: skip
    return CpRecord(**{**base, **kw})


def session(session_id: str = "s-1", **kw) -> Session:
    base = {"session_id": session_id, "request_id": "r-1", "cp_id": "CP-1", "driver_id": "alice",
            "price": 300_000, "created_at": 100.0}  # fmt: skip
    return Session(**{**base, **kw})


def denied(request_id: str = "r-1") -> RequestDenied:
    return RequestDenied(
        driver_id="alice", request_id=request_id, cp_id="CP-1", code=DenyCode.BUSY, reason="busy"
    )


async def test_a_fresh_store_is_empty(store: CentralStore) -> None:
    assert await store.load_cps() == [] and await store.load_active_sessions() == []
    assert await store.outbox.outbox_batch(10) == []
    assert (await store.outbox.outbox_stats()).rows == 0


async def test_a_commit_writes_records_and_their_messages_together_and_in_order(store: CentralStore) -> None:
    outcome = RequestOutcome(
        "r-1", "alice", "CP-1", Outcome.DENIED, code="busy", reason="busy", decided_at=5.0
    )
    change = Change(
        cps={"CP-1": record()},
        secrets={"CP-1": "ab" * 32},
        sessions={"s-1": session(wh=12, micro_eur=3_600)},
        requests=[outcome],
        messages=[StopCp(cp_id="CP-1"), denied()],
    )
    await store.commit(change)
    assert await store.load_cps() == [record()]
    assert await store.secret_hash("CP-1") == "ab" * 32
    assert await store.request_outcome("r-1") == outcome
    [active] = await store.load_active_sessions()
    assert active == session(wh=12, micro_eur=3_600), "every field, integers exact"
    rows = await store.outbox.outbox_batch(10)
    assert [(r.topic, r.key) for r in rows] == [(Topic.CP_COMMANDS, "CP-1"), (Topic.DRIVER_UPDATES, "alice")]
    assert isinstance(CP_COMMANDS.decode(rows[0].payload), StopCp)
    assert isinstance(DRIVER_UPDATES.decode(rows[1].payload), RequestDenied)
    stats = await store.outbox.outbox_stats()
    assert stats.rows == 2 and stats.oldest_at is not None
    await store.outbox.outbox_delete([rows[0].row_id])
    assert [r.row_id for r in await store.outbox.outbox_batch(10)] == [rows[1].row_id]


async def test_a_failed_commit_leaves_nothing_of_it(store: CentralStore) -> None:
    broken = session("s-2", request_id=None)  # the store refuses a session without a request id
    with pytest.raises(Exception):  # noqa: B017 - each database names its own constraint error
        await store.commit(
            Change(cps={"CP-1": record()}, sessions={"s-2": broken}, messages=[StopCp(cp_id="CP-1")])
        )
    assert await store.load_cps() == []
    assert await store.outbox.outbox_batch(10) == []


async def test_sessions_and_records_are_updated_in_place(store: CentralStore) -> None:
    await store.commit(Change(cps={"CP-1": record()}, sessions={"s-1": session()}))
    ended = session(state=SessionState.ENDED, wh=48, micro_eur=14_400, end_reason=EndReason.COMPLETED,
                    meter_final=True, ticket_revision=1, ticket_id="t-1", billed_wh=48,
                    billed_micro_eur=14_400)  # fmt: skip
    await store.commit(Change(cps={"CP-1": record(stopped=True)}, sessions={"s-1": ended}))
    assert (await store.load_cps())[0].stopped is True
    assert await store.load_active_sessions() == []
    assert (await store.sessions_by_id(["s-1", "nobody"])) == {"s-1": ended}


async def test_a_request_outcome_is_recorded_once(store: CentralStore) -> None:
    first = RequestOutcome("r-1", "alice", "CP-1", Outcome.ACCEPTED, session_id="s-1", decided_at=1.0)
    again = dataclasses.replace(first, outcome=Outcome.DENIED, session_id=None)
    await store.commit(Change(requests=[first]))
    await store.commit(Change(requests=[again]))
    assert await store.request_outcome("r-1") == first


async def test_forgetting_a_cp_forgets_its_secret_too(store: CentralStore) -> None:
    await store.commit(Change(cps={"CP-1": record()}, secrets={"CP-1": "cd" * 32}))
    await store.commit(Change(forget=["CP-1"]))
    assert await store.load_cps() == [] and await store.secret_hash("CP-1") is None


async def test_session_queries_filter_and_list_the_newest_first(store: CentralStore) -> None:
    sessions = {
        "a": session("a", driver_id="alice", cp_id="CP-1", created_at=100.0),
        "b": session("b", driver_id="bob", cp_id="CP-1", created_at=200.0),
        "c": session("c", driver_id="alice", cp_id="CP-2", created_at=300.0),
    }
    await store.commit(Change(sessions=sessions))

    async def ids(**query) -> list[str]:
        return [s.session_id for s in await store.sessions(SessionQuery(**query))]

    assert await ids() == ["c", "b", "a"]
    assert await ids(driver_id="alice") == ["c", "a"]
    assert await ids(cp_id="CP-1") == ["b", "a"]
    assert await ids(since=150.0, until=300.0) == ["b"]
    assert await ids(limit=1) == ["c"]


async def test_reopening_keeps_everything_and_runs_no_migration_twice(store: CentralStore) -> None:
    await store.commit(Change(cps={"CP-1": record()}))
    url = store.reopen_url  # type: ignore[attr-defined]
    await store.close()
    again = await open_store(url)
    try:
        assert await again.load_cps() == [record()]
    finally:
        await again.close()


async def test_a_second_central_on_the_same_sqlite_file_is_refused_naming_the_first(tmp_path) -> None:
    first = await open_store(tmp_path / "central.sqlite")
    assert isinstance(first, SqliteStore)
    first.claim("central pid 4242 (monitors on 127.0.0.1:7000)")
    try:
        with pytest.raises(ConfigError, match=r"pid 4242.*only one central"):
            await open_store(tmp_path / "central.sqlite")
    finally:
        await first.close()


async def test_the_sqlite_store_fsyncs_every_commit(tmp_path) -> None:
    opened = await open_store(tmp_path / "central.sqlite")
    assert isinstance(opened, SqliteStore)
    try:
        assert await opened.database.synchronous() == 2, "synchronous=FULL: a commit survives a power cut"
    finally:
        await opened.close()


async def test_store_urls_name_their_store_or_are_refused(tmp_path) -> None:
    for url in ("mysql://x/y", "sqlite://relative/path"):
        with pytest.raises(ConfigError):
            await open_store(url)
    with pytest.raises(StoreUnavailable):
        await open_store(f"postgresql://evcharge@127.0.0.1:{free_port()}/nothing")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_store_keeps_its_identity_and_another_store_has_another(kind, request, tmp_path) -> None:
    url = (
        f"sqlite://{tmp_path / 'central.sqlite'}"
        if kind == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    first = await open_store(url)
    mine = await first.identity()
    await first.close()
    again, other = await open_store(url), await open_store(tmp_path / "other.sqlite")
    try:
        assert await again.identity() == mine and len(mine) >= 32
        assert await other.identity() != mine
    finally:
        await again.close()
        await other.close()


# ------------------------------------------------------------------ the lead (PostgreSQL)

A = Holder("central-a", "10.0.0.1:7000", "http://10.0.0.1:8000", 11, "host-a")
B = Holder("central-b", "10.0.0.2:7000", "http://10.0.0.2:8000", 22, "host-b")


async def test_the_lead_goes_to_one_central_until_its_lease_expires_and_each_take_bumps_the_epoch(
    postgres_url,
) -> None:
    store = await open_store(postgres_url)
    try:
        lease = store.leadership_lease()
        assert lease is not None
        assert await lease.leader() is None
        assert await lease.acquire(A, 0.5) == 1
        assert await lease.acquire(B, 0.5) is None, "held, unexpired: not B's to take"
        assert await lease.leader() == A
        assert await lease.renew(A, 1, 0.5)
        await asyncio.sleep(0.6)  # the store's clock runs the lease out: nobody renewed it
        assert await lease.leader() is None
        assert await lease.acquire(B, 5.0) == 2
        assert not await lease.renew(A, 1, 5.0), "A's epoch is gone: A must step down"
        assert await lease.leader() == B
        await lease.release(B, 2)
        assert await lease.acquire(A, 5.0) == 3, "a released lease is free at once"
    finally:
        await store.close()


async def test_a_commit_of_a_central_that_lost_the_lead_is_refused_and_writes_nothing(postgres_url) -> None:
    leader, zombie = await open_store(postgres_url), await open_store(postgres_url)
    try:
        lease = leader.leadership_lease()
        assert lease is not None
        zombie.epoch = await lease.acquire(A, 0.1)  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)
        leader.epoch = await lease.acquire(B, 5.0)  # type: ignore[attr-defined]
        await leader.commit(Change(cps={"CP-1": record()}))
        with pytest.raises(Fenced, match="epoch 2"):
            await zombie.commit(Change(cps={"CP-2": record("CP-2")}, messages=[StopCp(cp_id="CP-2")]))
        with pytest.raises(Fenced):
            await zombie.dead_letter("evcharge.cp.events", "CP-2", b"x")
        assert await leader.load_cps() == [record()], "nothing of the fenced commit was kept"
        assert await leader.outbox.outbox_batch(10) == []
    finally:
        await leader.close()
        await zombie.close()


async def test_the_embedded_store_has_no_lease_to_share(tmp_path) -> None:
    store = await open_store(tmp_path / "central.sqlite")
    try:
        assert store.leadership_lease() is None
    finally:
        await store.close()
