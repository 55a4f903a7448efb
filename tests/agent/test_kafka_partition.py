"""The window partitioner puts every key where aiokafka's (Kafka's) default partitioner does."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner, murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_audit_agent.delivery.kafka_partition import murmur2_many, partitions_for_keys


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=40))
def test_murmur2_many_matches_kafka_murmur2(keys: list[bytes]) -> None:
    assert murmur2_many(keys) == [murmur2(k) for k in keys]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=64),
       st.integers(min_value=1, max_value=48))
def test_partitions_match_the_default_partitioner(keys: list[bytes], count: int) -> None:
    partitions = list(range(count))
    reference = DefaultPartitioner()
    assert partitions_for_keys(keys, partitions) == [
        reference(k, partitions, partitions) for k in keys]


def test_trail_ids_of_one_length_spread_over_partitions() -> None:
    keys = [f"{i:032x}-{i % 7}".encode() for i in range(4096)]
    placed = partitions_for_keys(keys, [0, 1, 2, 3, 4, 5])
    assert placed == [DefaultPartitioner()(k, list(range(6)), list(range(6))) for k in keys]
    assert set(placed) == set(range(6))
