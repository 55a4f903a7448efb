"""The record log on real files: chain across restarts, keys, retention by age, the publisher
reading back from disk when its in-memory tail overflowed, refusals kept not dropped."""

from __future__ import annotations

import asyncio
import itertools
import stat
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.agent_harness import until
from vllm_audit_agent.delivery.no_kafka import InMemoryPublisher
from vllm_audit_agent.records import disk_feed
from vllm_audit_agent.records.chain import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    Signer,
    load_or_create_signer,
    load_public_key,
)
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.records.read_only import read_records
from vllm_audit_agent.records.verify import verify_chain

DAY_S = 86400.0


class Clock:
    """Wall time the test sets (retention by age spans months)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def request(i: int) -> dict[str, Any]:
    return {"schema": 1, "request_id": f"req-{i}", "latency_ms": 12.5, "prompt": "x" * 200}


def open_log(path: Path, signer: Signer, **kw: Any) -> RecordLog:
    return RecordLog(path, kw.pop("max_bytes", 1 << 30), "batch", signer, **kw)


async def test_the_chain_continues_across_restarts(tmp_path: Path) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    log = open_log(tmp_path, signer, checkpoint_every=4)
    for i in range(10):
        log.append(request(i))
    await log.write_pending()
    head = (log.head_seq, log.head_hash)
    log.close()
    again = open_log(tmp_path, signer, checkpoint_every=4)
    assert (again.head_seq, again.head_hash) == head
    assert again.replay_event_ids == {f"req-{i}/0" for i in range(10)}
    again.append(request(10))
    again.checkpoint()
    await again.write_pending()
    again.close()
    report = verify_chain(read_records(tmp_path), signer.public_key)
    # The genesis, 11 requests; checkpoints after 4, 8 and the last one.
    assert report.intact and (report.records, report.checkpoints) == (15, 3)
    assert report.log_id == again.log_id == log.log_id and report.tree_size == 15


def test_a_key_is_generated_once_0600_with_its_public_key(tmp_path: Path) -> None:
    first = load_or_create_signer(None, tmp_path)
    key = tmp_path / PRIVATE_KEY_NAME
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert load_or_create_signer(None, tmp_path).key_id == first.key_id
    assert load_public_key(tmp_path / PUBLIC_KEY_NAME) == first.public_key
    # A configured key: raw 32 bytes or PEM.
    private = Ed25519PrivateKey.generate()
    raw = tmp_path / "raw.key"
    raw.write_bytes(private.private_bytes(serialization.Encoding.Raw,
                                          serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption()))
    pem = tmp_path / "pem.key"
    pem.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    assert load_or_create_signer(raw, tmp_path).key_id == load_or_create_signer(
        pem, tmp_path).key_id != first.key_id


async def test_retention_by_age_expires_published_segments_only(tmp_path: Path) -> None:
    clock = Clock(1_790_000_000.0)
    log = open_log(tmp_path, Signer(Ed25519PrivateKey.generate()), segment_bytes=600,
                   retention_days=180, clock=clock)
    for i in range(6):
        log.append(request(i))
    await log.write_pending()
    clock.now += 181 * DAY_S
    log.append(request(99))  # a new segment, recent
    await log.write_pending()
    assert log.reclaim() == 0  # nothing published yet: all still owed to the sink
    log.acknowledged(4, 0)
    assert log.reclaim() == 0  # a seal first: the segments go once it is durable
    await log.write_pending()
    expired = log.counters["expired_segments_age"]
    assert expired >= 1 and log.counters["seals_written"] == 1
    assert log.counters["expired_segments_size"] == 0
    left = [orjson.loads(p).get("request_id") for p in read_records(tmp_path)]
    # What the sink had not acknowledged (seq > 4) is still there, and the recent record.
    assert [r for r in left if r][-4:] == ["req-3", "req-4", "req-5", "req-99"]
    log.close()


async def test_the_publisher_reads_from_disk_when_its_tail_overflowed(tmp_path: Path) -> None:
    log = open_log(tmp_path, Signer(Ed25519PrivateKey.generate()), tail_max_bytes=4096)
    for i in range(300):
        log.append(request(i))
    await log.write_pending()
    assert log.counters["tail_overflow_records"] > 0
    publisher = InMemoryPublisher(max_records=1000)
    await publisher.start(log)
    await until(lambda: log.backlog_records == 0, "backlog published")
    await publisher.stop(5)
    keys = [v["request_id"] for topic, _, v in publisher.records
            if topic == "requests"]
    assert keys == [f"req-{i}" for i in range(300)]  # each once, in order
    assert log.counters["disk_reads"] >= 1
    assert (tmp_path / "cursor").read_text().strip() == str(log.head_seq)
    log.close()


async def test_disk_reads_go_on_from_where_they_stopped_across_segments(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small chunks over small segments: the publisher reads many chunks (each read ahead
    while the one before is sent) and gets every record once, in order. A read from any
    other point (a publisher started again from its cursor) gets what follows that point."""
    monkeypatch.setattr(disk_feed, "DISK_CHUNK_BYTES", 3000)
    log = open_log(tmp_path, Signer(Ed25519PrivateKey.generate()), tail_max_bytes=2048,
                   segment_bytes=5000)
    for i in range(400):
        log.append(request(i))
    await log.write_pending()
    assert len(log.wal.segments()) > 10
    publisher = InMemoryPublisher(max_records=1000)
    await publisher.start(log)
    await until(lambda: log.backlog_records == 0, "backlog published")
    await publisher.stop(5)
    keys = [v["request_id"] for topic, _, v in publisher.records
            if topic == "requests"]
    assert keys == [f"req-{i}" for i in range(400)]
    assert log.counters["disk_reads"] >= 20
    on_disk = log.durable_seq  # the tail went with the acknowledgements: all on disk
    for start in (0, 250, 7, 8, 399 - 60, 120, 121):
        got: list[int] = []
        after = start
        while entries := await log.read(after, 50):  # a chunk may end before 50
            got += [e.seq for e in entries]
            after = entries[-1].seq
        assert got == list(range(start + 1, on_disk + 1)), start
    await log.stop_reading()
    log.close()


async def test_a_full_log_keeps_records_queued_until_there_is_room(tmp_path: Path) -> None:
    log = open_log(tmp_path, Signer(Ed25519PrivateKey.generate()), max_bytes=3000,
                   segment_bytes=400)
    recorded: list[int] = []
    for i in range(12):
        log.append(request(i), on_recorded=lambda i=i: recorded.append(i))
    log.start()
    await until(lambda: log.counters["refused_wal_full"] >= 1, "a refusal")
    assert log.pending and len(recorded) < 12  # kept, not dropped, not acknowledged
    publisher = InMemoryPublisher(max_records=1000)
    await publisher.start(log)  # publishing lets retention free published segments
    await until(lambda: not log.pending, "everything written")
    assert recorded == list(range(12))
    await log.stop(5)
    await publisher.stop(5)
    keys = [v["request_id"] for topic, _, v in publisher.records
            if topic == "requests"]
    assert keys == [f"req-{i}" for i in range(12)]
    log.close()


async def test_checkpoints_come_every_interval_when_records_arrive(tmp_path: Path) -> None:
    log = open_log(tmp_path, Signer(Ed25519PrivateKey.generate()), checkpoint_interval=0.2)
    log.start()
    log.append(request(1))
    await until(lambda: log.counters["appended_checkpoint"] == 1, "a timed checkpoint")
    await asyncio.sleep(0.5)  # no new records: no new checkpoint
    assert log.counters["appended_checkpoint"] == 1
    await log.stop(5)  # nothing since the last checkpoint: none added at stop
    assert log.counters["appended_checkpoint"] == 1
    log.close()


async def test_consistency_proofs_hold_for_records_before_witnesses_were_added(tmp_path: Path
                                                                               ) -> None:
    """Records appended before a witness listener registers (the genesis, the level at start)
    are in the proof base, not missing from it: every proof from then on verifies."""
    from vllm_audit_agent.records import merkle

    log = open_log(tmp_path, Signer(Ed25519PrivateKey.generate()), checkpoint_every=1000)
    log.append(request(0))
    sizes: list[tuple[int, str]] = []
    log.add_checkpoint_listener(lambda r: sizes.append((r["tree_size"], r["root_hash"])))
    for i in range(1, 20):
        log.append(request(i))
        if i % 6 == 0:
            log.checkpoint()
    log.checkpoint()
    await log.write_pending()
    assert len(sizes) == 4
    for (old, old_root), (new, new_root) in itertools.pairwise(sizes):
        proof = log.consistency_proof(old, new)
        assert merkle.verify_consistency(old, new, bytes.fromhex(old_root),
                                         bytes.fromhex(new_root), proof), (old, new)
    log.close()


async def test_a_record_made_durable_while_the_cursor_is_written_is_published_at_stop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's stop writes the record log's final checkpoint and then stops the publisher;
    the publisher was often writing its cursor (on a thread) meanwhile. A stop found after
    that write used to return at once, leaving the checkpoint unpublished until the next
    start (one record at every clean stop): it is published first."""
    log = open_log(tmp_path, Signer(Ed25519PrivateKey.generate()))
    persisting, release = threading.Event(), threading.Event()
    write_cursor = log.persist_cursor

    def slow_persist() -> None:
        persisting.set()
        release.wait(10)
        write_cursor()

    monkeypatch.setattr(log, "persist_cursor", slow_persist)
    publisher = InMemoryPublisher(max_records=1000)
    await publisher.start(log)
    log.append(request(1))
    await log.write_pending()
    assert await asyncio.to_thread(persisting.wait, 10)  # the cursor's write is under way
    log.append(request(2))  # the final record, durable while the publisher waits
    await log.write_pending()
    stopping = asyncio.create_task(publisher.stop(5))
    await asyncio.sleep(0.1)  # the stop is asked for before the cursor's write returns
    release.set()
    assert await stopping == 0
    assert [v.get("request_id") for topic, _, v in publisher.records
            if topic == "requests"] == ["req-1", "req-2"]
    assert log.backlog_records == 0
    log.close()
