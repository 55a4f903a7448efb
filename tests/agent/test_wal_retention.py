"""The WAL keeps what is owed downstream and no more.

With Kafka, segments are reclaimed once every trail in them is final and its record
delivered; while Kafka is down nothing is delivered, so the WAL grows, refuses batches at its
cap (the hook keeps them), and drains when Kafka comes back. Without Kafka the WAL is the
archive: the newest records are kept up to the cap and the oldest segments expire, counted.
Real broker, real gRPC, real files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, query_pb2

from agent.publisher import KafkaPublisher
from agent.server import running_agent
from tests.support.agent_harness import Hook, agent, agent_config, lifecycle, query, until
from tests.support.kafka_broker import KafkaBroker

#: About two one-event batches per segment.
SEGMENT_BYTES = 100


def finished(rid: str) -> pb.Event:
    return lifecycle(rid, pb.LIFECYCLE_PHASE_FINISHED, 10**15, finish_reason="stop")


async def test_segments_are_reclaimed_once_their_trails_are_delivered(tmp_path: Path) -> None:
    async with agent(tmp_path, durable_publisher=True, wal_segment_bytes=SEGMENT_BYTES) as (
            handle, published), Hook(handle.state.config.ingest_socket) as hook:
        state, wal = handle.state, handle.state.wal
        # An open trail (its request is still running) pins the segment holding it.
        await hook.send(1, lifecycle("0-0pen0000", pb.LIFECYCLE_PHASE_ADDED, 10**15))
        pinned = wal.segments()[0]
        for seq in range(2, 12):
            await hook.send(seq, finished(f"{seq}-d0ne0000"))
        state.reclaim_wal()  # (the agent's sweeper also does this twice a second)
        # Everything sealed and delivered is gone; the pinned segment and the open one stay.
        assert wal.segments() == [pinned, wal.current]
        assert wal.deleted_segments >= 3
        await hook.send(12, finished("0-0pen0000"))
        assert "0-0pen0000" in [key for _, key, _ in published.records]
        state.reclaim_wal()
        assert wal.segments() == [wal.current]
    # A restart replays only what is left, and loses no trail that was still owed.
    async with agent(tmp_path, durable_publisher=True, wal_segment_bytes=SEGMENT_BYTES) as (
            handle, published):
        # Only the open segment is left: it holds the last batch, whose trail is published
        # again (at-least-once, same event_id); the reclaimed ones are not replayed.
        assert [key for _, key, _ in published.records] == ["0-0pen0000"]
        assert handle.state.counters["wal_replayed_batches"] == 1


async def test_kafka_outage_grows_the_wal_to_its_cap_and_drains_after(tmp_path: Path) -> None:
    broker = KafkaBroker()  # its port is chosen, the broker not started yet: Kafka is down
    config = agent_config(tmp_path, wal_segment_bytes=SEGMENT_BYTES, wal_max_bytes=2000,
                          kafka_bootstrap=broker.bootstrap)
    publisher = KafkaPublisher(broker.bootstrap, config.kafka_topic_prefix, max_backoff=0.5)
    async with running_agent(config, publisher=publisher) as handle, \
            Hook(config.ingest_socket) as hook:
        state = handle.state
        seq, stored = 0, []
        while True:  # until the WAL refuses
            seq += 1
            reply = await hook.send(seq, finished(f"{seq}-0utage00"))
            if reply.ack.refused:
                break
            stored.append(f"{seq}-0utage00")
        assert reply.ack.refusal == ingest_pb2.REFUSAL_REASON_WAL_FULL
        assert reply.ack.reason.startswith("wal_full: ")
        assert state.wal.size <= 2000 and state.reclaim_wal() == 0
        assert not publisher.connected

        await asyncio.to_thread(broker.__enter__)  # Kafka is back (its start is blocking)
        try:
            await until(lambda: publisher.counters["published"] >= len(stored), "publishing")
            await until(lambda: state.wal.size < 2 * SEGMENT_BYTES,  # the sweeper reclaims
                        "WAL drained")
            # The refused batch is accepted now (the hook retries it).
            again = await hook.send(seq, finished(f"{seq}-0utage00"))
            assert not again.ack.refused and not again.ack.duplicate

            consumer = AIOKafkaConsumer("vllm-audit.requests", bootstrap_servers=broker.bootstrap,
                                        auto_offset_reset="earliest", enable_auto_commit=False)
            await consumer.start()
            keys: set[str] = set()
            try:
                async with asyncio.timeout(30):
                    while not set(stored) <= keys:
                        for records in (await consumer.getmany(timeout_ms=500)).values():
                            keys.update(r.key.decode() for r in records if r.key)
            finally:
                await consumer.stop()
            trails = await query(handle).ListTrails(query_pb2.ListTrailsRequest(page_size=1000))
            assert len(trails.trails) == len(stored) + 1
        finally:
            await asyncio.to_thread(broker.__exit__, None, None, None)
        assert not state.errors


async def test_without_kafka_the_wal_keeps_the_newest_records_up_to_its_cap(
    tmp_path: Path,
) -> None:
    cap = 1000
    async with agent(tmp_path, wal_segment_bytes=SEGMENT_BYTES, wal_max_bytes=cap) as (
            handle, _), Hook(handle.state.config.ingest_socket) as hook:
        state = handle.state
        for seq in range(1, 61):
            reply = await hook.send(seq, finished(f"{seq}-arch1ve0"))
            assert not reply.ack.refused, f"batch {seq} refused at {state.wal.size} bytes"
            state.reclaim_wal()  # as the sweeper does; here after every batch
        assert state.wal.size <= cap
        expired = state.counters["wal_expired_segments"]
        assert expired > 0
    async with agent(tmp_path, wal_segment_bytes=SEGMENT_BYTES, wal_max_bytes=cap) as (
            handle, published):
        kept = [key for _, key, _ in published.records]
        # A suffix of what was sent survives the restart: the newest, in order.
        assert kept and kept == [f"{seq}-arch1ve0" for seq in range(61 - len(kept), 61)]
        stats = await query(handle).GetStats(query_pb2.StatsRequest())
        assert stats.trails_finished == len(kept)
