"""The producers' partitioner: Kafka's own placement of every key, computed once per key."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from evcharge.runtime.kafka import KeyPartitioner, partition_for_key


@given(keys=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=50), count=st.integers(1, 64))
def test_every_key_goes_where_kafkas_default_partitioner_puts_it(keys: list[bytes], count: int) -> None:
    partitions = list(range(count))
    remembered = KeyPartitioner()
    for key in keys + keys:  # the second time from memory
        assert remembered(key, partitions, partitions) == DefaultPartitioner()(key, partitions, partitions)


def test_a_topic_grown_more_partitions_is_placed_anew_and_ids_match_the_readers_rule() -> None:
    remembered = KeyPartitioner()
    key = b"CP-0042"
    assert remembered(key, list(range(6)), []) == partition_for_key("CP-0042", 6)
    assert remembered(key, list(range(12)), []) == partition_for_key("CP-0042", 12)


def test_a_record_without_a_key_goes_to_an_available_partition() -> None:
    assert KeyPartitioner()(None, [0, 1, 2, 3], [2]) == 2


def test_memory_is_bounded() -> None:
    remembered = KeyPartitioner()
    remembered.LIMIT = 10
    for n in range(25):
        assert remembered(f"driver-{n}".encode(), [0, 1, 2], [0, 1, 2]) == partition_for_key(f"driver-{n}", 3)
    assert len(remembered._known) <= 10
