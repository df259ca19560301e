"""Unit tests for the gateway's signing of its chargers' events, on a real SQLite store: each
charger's events carry its own key's signature, and with `hold_unsigned` a charger's events wait in
the outbox for its key while every other row goes."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from evcharge.gateway.recorder import TransactionRecorder
from evcharge.gateway.store import GatewayStore
from evcharge.protocol import signing
from evcharge.protocol.messages import MeterReading
from evcharge.protocol.topics import Topic


def reading(cp_id: str, seq: int) -> MeterReading:
    return MeterReading(cp_id=cp_id, session_id="s-1", seq=seq, power_w=7_400, wh=seq, micro_eur=seq * 300)


async def test_a_chargers_events_wait_for_its_key_and_go_signed_with_it(tmp_path: Path) -> None:
    store = await GatewayStore.open(tmp_path / "gateway.sqlite")
    recorder = TransactionRecorder(store, "127.0.0.1:1", consumer="gateway-test", answer_timeout_s=1)
    try:
        store.hold_unsigned = True
        for cp_id in ("OCPP-1", "OCPP-2"):
            await store.join(cp_id)

        def queue(db: sqlite3.Connection) -> None:
            GatewayStore.queue(db, [reading("OCPP-1", 1), reading("OCPP-2", 1), reading("OCPP-1", 2)])
            GatewayStore.queue_raw(db, Topic.DEAD_LETTERS.value, "OCPP-1", b"a dead letter")

        await store.write(queue)
        # No charger has a key yet: only the gateway's own row (a dead letter) may go, unsigned.
        (letter,) = await store.outbox_batch(100)
        assert letter.topic == Topic.DEAD_LETTERS
        assert recorder.signature(letter) == []

        key_1, key_2 = signing.new_key(), signing.new_key()
        assert await store.keep_engine_key("OCPP-1", key_1)
        assert not await store.keep_engine_key("OCPP-1", key_1)  # the same key again: no write
        rows = await store.outbox_batch(100)
        assert [(r.topic, r.key) for r in rows] == [
            (Topic.CP_EVENTS, "OCPP-1"),
            (Topic.CP_EVENTS, "OCPP-1"),
            (Topic.DEAD_LETTERS, "OCPP-1"),
        ]
        for row in rows[:2]:
            (signature,) = recorder.signature(row)
            assert signature[0] == signing.SIGNATURE_HEADER
            assert signing.verify(key_1, row.payload, signature[1])
            assert not signing.verify(key_2, row.payload, signature[1])

        await store.keep_engine_key("OCPP-2", key_2)
        assert len(await store.outbox_batch(100)) == 4
    finally:
        recorder.close()
        await store.close()

    # The keys outlive a restart, in a file only the gateway's user may read.
    assert stat.S_IMODE((tmp_path / "gateway.sqlite").stat().st_mode) == 0o600
    again = await GatewayStore.open(tmp_path / "gateway.sqlite")
    try:
        assert (again.engine_key("OCPP-1"), again.engine_key("OCPP-2")) == (key_1, key_2)
        assert again.engine_key("OCPP-3") is None
    finally:
        await again.close()


async def test_without_hold_a_charger_without_a_key_publishes_unsigned(tmp_path: Path) -> None:
    """A central without a join token issues no keys: the events go as they are, unsigned."""
    store = await GatewayStore.open(tmp_path / "gateway.sqlite")
    recorder = TransactionRecorder(store, "127.0.0.1:1", consumer="gateway-test", answer_timeout_s=1)
    try:
        await store.join("OCPP-1")

        def queue(db: sqlite3.Connection) -> None:
            GatewayStore.queue(db, [reading("OCPP-1", 1)])

        await store.write(queue)
        (row,) = await store.outbox_batch(100)
        assert recorder.signature(row) == []
    finally:
        recorder.close()
        await store.close()
