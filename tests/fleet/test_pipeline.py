"""The consumer's pipelined write path (fleet/pipeline.py) on a real record log and a real chDB
store: verifying a batch while the one before is not stored yet sees what it would see had
that one been stored (a rewritten copy is still flagged), and each batch saves its own logs'
states (a crash between two batches loses nothing). And the consumer on a real broker gathers
several fetches into one stored, committed batch."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.kafka_broker import KafkaBroker
from tests.fleet.test_verifier import written_log
from tests.support.agent_harness import until
from vllm_audit_agent.fleet.consumer import FleetConsumer
from vllm_audit_agent.fleet.pipeline import WritePath
from vllm_audit_agent.fleet.store import FleetStore
from vllm_audit_agent.fleet.verifier import FleetVerifier
from vllm_audit_agent.records.chain import seal
from vllm_audit_agent.records.entry import TOPICS


def rewritten(payload: bytes) -> bytes:
    """The same seq and chain link, another user: what a rewritten copy of the log holds."""
    record = orjson.loads(payload)
    record["user"] = "mallory"
    del record["hash"]
    return seal(record, record["seq"], record["prev_hash"])


def test_a_rewritten_copy_is_flagged_while_its_original_is_being_stored(
        tmp_path: Path, store: FleetStore) -> None:
    key = Ed25519PrivateKey.generate()
    payloads = written_log(tmp_path / "log", key, 30)
    path = WritePath(store, FleetVerifier(store, [key.public_key()]))
    first = path.prepare(payloads[:20], {})
    # the next batch is verified before the first is in the store (chDB inserts it meanwhile)
    second = path.prepare([rewritten(payloads[5]), *payloads[20:]], {})
    assert store.count() == 0
    (log,) = path.verifier.logs.values()
    assert (log.status, log.reason, log.break_seq) == ("broken", "conflicting_duplicate", 6)
    path.write(first)
    path.write(second)
    assert store.record_at(log.log_id, 6) == payloads[5]  # the original kept, not the copy


def test_each_batch_saves_its_own_states_so_a_crash_between_two_loses_nothing(
        tmp_path: Path, store: FleetStore) -> None:
    key = Ed25519PrivateKey.generate()
    payloads = written_log(tmp_path / "log", key, 30)
    path = WritePath(store, FleetVerifier(store, [key.public_key()]))
    first = path.prepare(payloads[:15], {})
    path.prepare(payloads[15:], {})  # fed, never stored: the process dies here
    path.write(first)
    (saved,) = store.logs()
    assert saved["head_seq"] == 15  # the first batch's head, not the second's
    # a restart from the store: the second batch is re-delivered (never committed)
    again = WritePath(store, FleetVerifier(store, [key.public_key()]))
    again.verifier.load(store.logs())
    again.write(again.prepare(payloads[15:], {}))
    (saved,) = store.logs()
    assert (saved["status"], saved["head_seq"]) == ("verified", len(payloads))
    assert store.count() == len(payloads)


async def publish(bootstrap: str, payloads: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for payload in payloads:
            record = orjson.loads(payload)
            await producer.send_and_wait(f"fleet.{TOPICS[record['type']]}", payload,
                                         key=record["log_id"].encode())
    finally:
        await producer.stop()


@pytest.mark.faults
async def test_the_consumer_gathers_fetches_into_one_batch(tmp_path: Path,
                                                            store: FleetStore) -> None:
    key = Ed25519PrivateKey.generate()
    payloads = await asyncio.to_thread(written_log, tmp_path / "log", key, 20)
    broker = KafkaBroker()
    await asyncio.to_thread(broker.__enter__)
    try:
        # the genesis and a request first: both topics exist before the consumer subscribes
        await publish(broker.bootstrap, payloads[:2])
        consumer = FleetConsumer(broker.bootstrap, "fleet", "g", store,
                                 FleetVerifier(store, [key.public_key()]), max_records=1000,
                                 max_wait_ms=4000)
        stop = asyncio.Event()
        running = asyncio.create_task(consumer.run(stop))
        try:
            await until(lambda: consumer.stats.batches >= 1, "the first batch", 60)
            # the rest in two bursts, apart: several fetches, one batch, one commit
            await publish(broker.bootstrap, payloads[2:10])
            await asyncio.sleep(0.5)
            await publish(broker.bootstrap, payloads[10:])
            await until(lambda: consumer.stats.records >= len(payloads), "every record", 60)
        finally:
            stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(running, 30)
        assert (consumer.stats.batches, consumer.stats.records) == (2, len(payloads))
        (saved,) = store.logs()
        assert (saved["status"], saved["head_seq"]) == ("verified", len(payloads))
        assert store.count() == len(payloads)
    finally:
        await asyncio.to_thread(broker.__exit__, None, None, None)
