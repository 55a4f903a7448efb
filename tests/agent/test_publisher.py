"""The publisher sends the record log from a persisted cursor to a real broker.

Real agent in-process (real gRPC ingest, real record log), real broker (Tansu), real
consumer; `vllm-audit verify` reads the chain back from Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from harness.kafka_broker import KafkaBroker
from tests.support.agent_harness import Hook, agent_config, lifecycle, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.delivery.kafka_sink import KafkaPublisher
from vllm_audit_agent.records.chain import PUBLIC_KEY_NAME
from vllm_audit_agent.records.log import DEAD_LETTER_NAME
from vllm_audit_agent.server import running_agent


def finished(rid: str) -> pb.Event:
    return lifecycle(rid, pb.LIFECYCLE_PHASE_FINISHED, 10**15, finish_reason="stop")


@pytest.fixture
async def broker() -> AsyncIterator[KafkaBroker]:
    broker = KafkaBroker()
    await asyncio.to_thread(broker.__enter__)  # its start is blocking
    try:
        yield broker
    finally:
        await asyncio.to_thread(broker.__exit__, None, None, None)


async def consume(bootstrap: str, topic: str, at_least: int) -> list[dict[str, object]]:
    """Every record of `topic` (read until at least `at_least` arrived, bounded)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[dict[str, object]] = []
    try:
        async with asyncio.timeout(30):
            while len(out) < at_least:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(orjson.loads(r.value) for r in records if r.value)
            # Anything beyond (duplicates) arrives in the same fetches; one more look.
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                out.extend(orjson.loads(r.value) for r in records if r.value)
    finally:
        await consumer.stop()
    return out


def verify_kafka(broker: KafkaBroker, tmp_path: Path) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "vllm_audit_agent.cli", "verify", "--kafka-bootstrap", broker.bootstrap,
         "--public-key", str(tmp_path / "data" / PUBLIC_KEY_NAME)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 1) and done.stdout, done.stderr
    out = orjson.loads(done.stdout)
    assert len(out["logs"]) == 1, out  # one agent, one log on the topics
    return done.returncode, out["logs"][0]


async def test_the_cursor_survives_a_restart(broker: KafkaBroker, tmp_path: Path) -> None:
    config = agent_config(tmp_path, kafka_bootstrap=broker.bootstrap,
                          checkpoint_interval_seconds=3600)
    publisher = KafkaPublisher(broker.bootstrap, config.kafka_topic_prefix, max_backoff=0.5)
    async with running_agent(config, publisher=publisher) as handle, \
            Hook(config.ingest_socket) as hook:
        for seq in range(1, 6):
            await hook.send(seq, finished(f"{seq}-f1rst000"))
        await until(lambda: handle.state.records.durable_seq == 7
                    and publisher.backlog_records == 0, "first run published")
    # the genesis, the level in effect, 5 requests and the checkpoint at the stop
    assert (tmp_path / "data" / "records" / "cursor").read_text().strip() == "8"

    publisher = KafkaPublisher(broker.bootstrap, config.kafka_topic_prefix, max_backoff=0.5)
    async with running_agent(config, publisher=publisher) as handle, \
            Hook(config.ingest_socket, source="src-2") as hook:
        for seq in range(1, 4):
            await hook.send(seq, finished(f"{seq}-sec0nd00"))
        await until(lambda: handle.state.records.durable_seq == 11
                    and publisher.backlog_records == 0, "second run published")
        # Only what came after the cursor was sent: the 3 new records, nothing again.
        assert publisher.counters["published"] == 3
        # The first run's trails, rebuilt from the ingest WAL, were recognised as recorded.
        assert handle.state.counters["records_deduplicated_at_replay"] == 5

    records = await consume(broker.bootstrap, "vllm-audit.requests", 8)
    ids = [r["event_id"] for r in records]
    assert len(ids) == 8 and len(set(ids)) == 8
    code, report = verify_kafka(broker, tmp_path)
    # The genesis, the level (once: unchanged at the restart), 8 requests and 2 checkpoints
    # (one per clean stop), one log across both runs.
    assert code == 0 and (report["records"], report["checkpoints"]) == (12, 2), report


async def test_a_frozen_broker_loses_nothing(broker: KafkaBroker, tmp_path: Path) -> None:
    config = agent_config(tmp_path, kafka_bootstrap=broker.bootstrap)
    publisher = KafkaPublisher(broker.bootstrap, config.kafka_topic_prefix, max_backoff=0.5)
    sent: list[str] = []
    async with running_agent(config, publisher=publisher) as handle, \
            Hook(config.ingest_socket) as hook:
        for seq in range(1, 21):
            sent.append(f"{seq}-bef0re00")
            await hook.send(seq, finished(sent[-1]))
        await until(lambda: publisher.counters["published"] >= 1, "publishing")
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            for seq in range(21, 51):
                sent.append(f"{seq}-fr0zen00")
                reply = await hook.send(seq, finished(sent[-1]))
                assert not reply.ack.refused  # the record log takes them while Kafka hangs
            await until(lambda: handle.state.records.durable_seq >= 50, "all recorded")
            await asyncio.sleep(3)  # the broker stays frozen a few seconds
            assert publisher.backlog_records > 0
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        await until(lambda: publisher.backlog_records == 0, "backlog drained", timeout=60)
        assert sum(publisher.dead_lettered.values()) == 0
    records = await consume(broker.bootstrap, "vllm-audit.requests", len(sent))
    assert {r["request_id"] for r in records} == set(sent)
    code, report = verify_kafka(broker, tmp_path)
    assert code == 0, report


async def test_a_record_too_large_for_the_broker_is_dead_lettered(
    broker: KafkaBroker, tmp_path: Path,
) -> None:
    config = agent_config(tmp_path, kafka_bootstrap=broker.bootstrap)
    publisher = KafkaPublisher(broker.bootstrap, config.kafka_topic_prefix, max_backoff=0.5)
    huge = pb.Event(time_unix_nano=10**15, request_id="huge", http=pb.HttpRequest(
        status_code=400, model="m", error="x" * (1200 * 1024)))  # > the 1 MiB request cap
    async with running_agent(config, publisher=publisher) as handle, \
            Hook(config.ingest_socket) as hook:
        await hook.send(1, huge)
        await hook.send(2, finished("2-after000"))
        await until(lambda: handle.state.records.durable_seq >= 2
                    and publisher.backlog_records == 0, "settled")
        assert publisher.dead_lettered["too_large"] == 1
        assert publisher.failures["too_large"] == 1
        assert publisher.counters["published"] == 3  # the genesis, the level, the small one
    parked = [orjson.loads(line) for line in
              (tmp_path / "data" / "records" / DEAD_LETTER_NAME).read_bytes().splitlines()]
    assert [(p["seq"], p["reason"]) for p in parked] == [(3, "too_large")]
    assert orjson.loads(parked[0]["record"])["request_id"] == "huge"
    assert (tmp_path / "data" / "records" / DEAD_LETTER_NAME).stat().st_mode & 0o777 == 0o600
    records = await consume(broker.bootstrap, "vllm-audit.requests", 1)
    assert [r["request_id"] for r in records] == ["2-after000"]


async def test_a_killed_broker_is_noticed_within_seconds_and_logged_within_bounds(
        broker: KafkaBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The connection probe sees a dead broker while the publisher is idle (before, the gauge
    stayed 1 until a send timed out or aiokafka refreshed its metadata: ~43 s), and the lines
    that repeat while it is down are rate-limited with a count (~35 lines/s before)."""
    caplog.set_level(logging.INFO)
    config = agent_config(tmp_path, kafka_bootstrap=broker.bootstrap)
    publisher = KafkaPublisher(broker.bootstrap, config.kafka_topic_prefix, max_backoff=0.2)
    async with running_agent(config, publisher=publisher, shutdown_timeout=3) as handle, \
            Hook(config.ingest_socket) as hook:
        await hook.send(1, finished("1-aliveaa0"))
        await until(lambda: publisher.backlog_records == 0 and publisher.connected, "published")
        os.kill(broker.pid, signal.SIGKILL)
        killed = time.monotonic()
        await until(lambda: not publisher.connected, "the broker's loss noticed", timeout=10)
        assert time.monotonic() - killed < 5
        assert publisher.counters["unreachable"] == 1
        caplog.clear()
        for seq in range(2, 22):  # records that cannot be delivered: retried, and logged
            await hook.send(seq, finished(f"{seq}-d0wn0000"))
        await asyncio.sleep(8)
        assert publisher.backlog_records > 0
        suppressed = dict(handle.state.log_limit.suppressed)
        lines = [r for r in caplog.records if r.name.startswith(("vllm_audit", "aiokafka"))]
    # Unlimited, aiokafka alone wrote ~20 lines/s here.
    assert suppressed["aiokafka"] > 50
    # Each repeated line: 5 at once, then one per 5 s, per (logger, template).
    per_template = Counter((r.name, str(r.msg).split(" [")[0]) for r in lines)
    assert max(per_template.values()) <= 7, per_template.most_common(3)
    assert any("similar lines suppressed" in r.getMessage() for r in lines)



@pytest.fixture
async def durable_broker(tmp_path: Path) -> AsyncIterator[KafkaBroker]:
    broker = KafkaBroker(durable_dir=tmp_path / "broker")
    await asyncio.to_thread(broker.__enter__)
    try:
        yield broker
    finally:
        await asyncio.to_thread(broker.__exit__, None, None, None)


async def delete_topic(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def test_a_topic_that_lost_what_it_acknowledged_gets_it_again_from_the_record_log(
        durable_broker: KafkaBroker, tmp_path: Path) -> None:
    """A topic deleted and recreated (auto-created by the next produce) gives offsets it had
    already given: the agent sees an acknowledgement below the partition's highest and sends
    again, from its record log, everything the broker no longer has, and the broker
    acknowledges it. Before, the 30 records sent before the deletion were gone from Kafka and
    the agent counted nothing. (Whether they are readable again is the broker's part: the test
    broker, Tansu, acknowledges produce requests to a recreated topic that its fetches then do
    not return, so this test stops at the acknowledgements.)"""
    broker = durable_broker
    config = agent_config(tmp_path, kafka_bootstrap=broker.bootstrap)
    publisher = KafkaPublisher(broker.bootstrap, config.kafka_topic_prefix, max_backoff=0.2)
    sent: list[str] = []
    async with running_agent(config, publisher=publisher, shutdown_timeout=5) as handle, \
            Hook(config.ingest_socket) as hook:
        seq = 0
        for _ in range(3):  # several batches per partition
            for _ in range(10):
                seq += 1
                sent.append(f"{seq}-bef0re00")
                await hook.send(seq, finished(sent[-1]))
            await until(lambda: publisher.backlog_records == 0, "published")
        await delete_topic(broker.bootstrap, "vllm-audit.requests")
        for _ in range(3):
            for _ in range(10):
                seq += 1
                sent.append(f"{seq}-aft3r000")
                await hook.send(seq, finished(sent[-1]))
            await asyncio.sleep(0.3)
        await until(lambda: publisher.counters["broker_lost_acknowledged"] >= 1,
                    "the loss noticed", timeout=60)
        await until(lambda: publisher.backlog_records == 0, "everything published again",
                    timeout=60)
        assert publisher.counters["republished"] >= 30
        assert handle.state.records.durable_seq >= 60
        # Sent again from the start of the record log: every record acknowledged once more.
        assert publisher.counters["published"] >= 30 + 60
