"""Central's store and the SQLite outbox on a real SQLite file: a decision and its messages
are written together or not at all, and the outbox gives them back in order."""

from __future__ import annotations

import asyncio

import pytest

from evcharge.central.ledger import Session, SessionState
from evcharge.central.store import CentralStore, CpRecord, Outgoing, RequestOutcome
from evcharge.messages import RequestDenied, StopCp, decode
from evcharge.runtime.kafka import TOPICS


def session(session_id: str = "s1") -> Session:
    return Session(
        session_id=session_id,
        request_id="r1",
        cp_id="CP-1",
        driver_id="d-1",
        price_eur_kwh=0.3,
        created_at=1.0,
    )


async def test_a_commit_writes_the_records_and_their_messages_together(tmp_path) -> None:
    store = await CentralStore.open(tmp_path / "c.sqlite")
    try:
        await store.commit(
            sessions=[session()],
            requests=[RequestOutcome("r1", "d-1", "CP-1", "accepted", session_id="s1")],
            messages=[Outgoing(TOPICS.cp_commands, "CP-1", StopCp(cp_id="CP-1"))],
        )
        assert (await store.session("s1")).state is SessionState.AUTHORISED
        assert (await store.request_outcome("r1")).session_id == "s1"
        (row,) = await store.outbox.outbox_batch(10)
        assert (row.topic, row.key) == (TOPICS.cp_commands, "CP-1")
    finally:
        await store.close()


async def test_a_failed_commit_leaves_neither_the_record_nor_the_message(tmp_path) -> None:
    store = await CentralStore.open(tmp_path / "c.sqlite")
    try:
        unencodable = Outgoing(TOPICS.cp_commands, "CP-1", object())  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await store.commit(sessions=[session()], messages=[unencodable])
        assert await store.session("s1") is None
        assert await store.outbox.size() == 0
    finally:
        await store.close()


async def test_the_outbox_returns_rows_in_order_and_forgets_deleted_ones(tmp_path) -> None:
    store = await CentralStore.open(tmp_path / "c.sqlite")
    try:
        for i in range(5):
            denial = RequestDenied(driver_id="d-1", request_id=f"r{i}", cp_id="CP-1", code="busy", reason="x")
            await store.commit(messages=[Outgoing(TOPICS.driver_updates, "d-1", denial)])
        rows = await store.outbox.outbox_batch(3)
        assert [decode(r.payload, RequestDenied).request_id for r in rows] == ["r0", "r1", "r2"]
        await store.outbox.outbox_delete([r.row_id for r in rows])
        rest = await store.outbox.outbox_batch(10)
        assert [decode(r.payload, RequestDenied).request_id for r in rest] == ["r3", "r4"]
    finally:
        await store.close()


async def test_concurrent_commits_on_one_connection_do_not_interleave(tmp_path) -> None:
    store = await CentralStore.open(tmp_path / "c.sqlite")
    try:
        await asyncio.gather(*(store.commit(sessions=[session(f"s{i}")]) for i in range(50)))
        assert len(await store.sessions(limit=100)) == 50
    finally:
        await store.close()


async def test_registry_survives_a_reopen(tmp_path) -> None:
    store = await CentralStore.open(tmp_path / "c.sqlite")
    await store.commit(cps=[CpRecord("CP-1", "Alicante", 0.3, 22.0, stopped=True, registered_at=1.0)])
    await store.close()
    store = await CentralStore.open(tmp_path / "c.sqlite")
    try:
        (cp,) = await store.load_cps()
        assert (cp.cp_id, cp.location, cp.stopped) == ("CP-1", "Alicante", True)
    finally:
        await store.close()
