"""The ingest WAL keeps what is not yet recorded; the record log keeps what is owed and archives.

Ingest segments are reclaimed once every trail in them is *recorded* (durable in the record
log), whether or not Kafka has it. While Kafka is down the record log grows to its cap and
then refuses; its records stay queued, their ingest segments stay pinned, the ingest WAL
fills and refuses the hook's batches (the hook keeps them); when Kafka comes back everything
drains. Without Kafka the record log is the archive: the newest records are kept up to the
cap and the oldest segments expire, counted. Real broker, real gRPC, real files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from harness.kafka_broker import KafkaBroker
from tests.support.agent_harness import (
    Hook,
    agent,
    agent_config,
    lifecycle,
    published_keys,
    query,
    requests_of,
    until,
)
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, query_pb2
from vllm_audit_agent.delivery.kafka_sink import KafkaPublisher
from vllm_audit_agent.records.read_only import read_records
from vllm_audit_agent.server import running_agent

#: About two one-event batches per segment.
SEGMENT_BYTES = 100


def finished(rid: str) -> pb.Event:
    return lifecycle(rid, pb.LIFECYCLE_PHASE_FINISHED, 10**15, finish_reason="stop")


def logged_request_ids(records_dir: Path) -> list[str]:
    import orjson

    return [r["request_id"] for r in map(orjson.loads, read_records(records_dir))
            if r["type"] == "request"]


async def test_segments_are_reclaimed_once_their_trails_are_recorded(tmp_path: Path) -> None:
    async with agent(tmp_path, wal_segment_bytes=SEGMENT_BYTES) as (
            handle, published), Hook(handle.state.config.ingest_socket) as hook:
        state, wal = handle.state, handle.state.wal
        # An open trail (its request is still running) pins the segment holding it.
        await hook.send(1, lifecycle("0-0pen0000", pb.LIFECYCLE_PHASE_ADDED, 10**15))
        pinned = wal.segments()[0]
        for seq in range(2, 12):
            await hook.send(seq, finished(f"{seq}-d0ne0000"))
        await until(lambda: state.records.durable_seq >= 10, "10 records durable")
        state.reclaim_wal()  # (the agent's sweeper also does this twice a second)
        # Everything sealed and recorded is gone; the pinned segment and the open one stay.
        assert wal.segments() == [pinned, wal.current]
        assert wal.deleted_segments >= 3
        await hook.send(12, finished("0-0pen0000"))
        assert "0-0pen0000" in await published_keys(published, 11)
        state.reclaim_wal()
        assert wal.segments() == [wal.current]
    # A restart replays only what is left of the ingest WAL; its trail is already recorded,
    # so nothing is recorded or published twice.
    async with agent(tmp_path, wal_segment_bytes=SEGMENT_BYTES) as (handle, published):
        assert handle.state.counters["wal_replayed_batches"] == 1
        assert handle.state.counters["records_deduplicated_at_replay"] == 1
        assert requests_of(published) == []
    assert sorted(logged_request_ids(tmp_path / "data" / "records")) == sorted(
        ["0-0pen0000"] + [f"{seq}-d0ne0000" for seq in range(2, 12)])


async def test_kafka_outage_fills_the_record_log_then_the_wal_and_drains_after(
    tmp_path: Path,
) -> None:
    broker = KafkaBroker()  # its port is chosen, the broker not started yet: Kafka is down
    config = agent_config(tmp_path, wal_segment_bytes=SEGMENT_BYTES, wal_max_bytes=2000,
                          record_log_max_bytes=16_000, kafka_bootstrap=broker.bootstrap,
                          record_expire_by_size=True)
    publisher = KafkaPublisher(broker.bootstrap, config.kafka_topic_prefix, max_backoff=0.5)
    async with running_agent(config, publisher=publisher) as handle, \
            Hook(config.ingest_socket) as hook:
        state = handle.state
        seq, stored = 0, []
        while True:  # until the ingest WAL refuses
            seq += 1
            reply = await hook.send(seq, finished(f"{seq}-0utage00"))
            if reply.ack.refused:
                break
            stored.append(f"{seq}-0utage00")
        assert reply.ack.refusal == ingest_pb2.REFUSAL_REASON_WAL_FULL
        assert reply.ack.reason.startswith("wal_full: ")
        # The record log reached its cap first and refused (nothing dropped: queued).
        assert state.records.counters["refused_wal_full"] >= 1 and state.records.pending
        assert state.records.wal.size <= 16_000 and state.wal.size <= 2000
        assert not publisher.connected
        assert publisher.backlog_records > 0 and publisher.backlog_bytes > 0
        assert publisher.oldest_unpublished_age_seconds >= 0

        await asyncio.to_thread(broker.__enter__)  # Kafka is back (its start is blocking)
        try:
            await until(lambda: not state.records.pending, "queued records written")
            await until(lambda: state.wal.size < 3 * SEGMENT_BYTES,  # the sweeper reclaims
                        "WAL drained")
            # The refused batch is accepted now (the hook retries it).
            again = await hook.send(seq, finished(f"{seq}-0utage00"))
            assert not again.ack.refused and not again.ack.duplicate
            stored.append(f"{seq}-0utage00")
            await until(lambda: publisher.backlog_records == 0, "publishing")

            consumer = AIOKafkaConsumer("vllm-audit.requests", bootstrap_servers=broker.bootstrap,
                                        auto_offset_reset="earliest", enable_auto_commit=False)
            await consumer.start()
            keys: set[str] = set()
            try:
                async with asyncio.timeout(30):
                    while not set(stored) <= keys:
                        for records in (await consumer.getmany(timeout_ms=500)).values():
                            keys.update(orjson.loads(r.value)["trail_id"] for r in records)
            finally:
                await consumer.stop()
            assert keys == set(stored)
            # Published segments past the cap were expired from the record log, counted.
            assert state.records.counters["expired_segments_size"] > 0
            trails = await query(handle).ListTrails(query_pb2.ListTrailsRequest(page_size=1000))
            assert len(trails.trails) == len(stored)
        finally:
            await asyncio.to_thread(broker.__exit__, None, None, None)
        assert not state.errors


async def test_without_kafka_the_record_log_keeps_the_newest_records_up_to_its_cap(
    tmp_path: Path,
) -> None:
    cap = 20_000
    async with agent(tmp_path, wal_segment_bytes=SEGMENT_BYTES, record_log_max_bytes=cap,
                     record_expire_by_size=True) as (
            handle, published), Hook(handle.state.config.ingest_socket) as hook:
        state = handle.state
        for seq in range(1, 61):
            reply = await hook.send(seq, finished(f"{seq}-arch1ve0"))
            assert not reply.ack.refused, f"batch {seq} refused"
            await published_keys(published, seq)
            state.reclaim_wal()  # as the sweeper does; here after every batch
        assert state.records.wal.size <= cap
        expired = state.records.counters["expired_segments_size"]
        assert expired > 0
        assert state.records.counters["expired_segments_age"] == 0
        # The ingest WAL keeps nothing that is recorded.
        assert state.wal.segments() == [state.wal.current]
    kept = logged_request_ids(tmp_path / "data" / "records")
    # A suffix of what was sent survives: the newest, in order.
    assert kept and kept == [f"{seq}-arch1ve0" for seq in range(61 - len(kept), 61)]
    assert len(kept) < 60
