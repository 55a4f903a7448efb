"""The record log's start (records/log_start.py) on real files: a footer the records after it do
not follow makes the start read the whole log, a cursor past the head or unreadable is counted
and corrected, and reading a start changes nothing on disk."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.sealed_logs import SEGMENT_BYTES, open_log, request, write_log
from vllm_audit_agent.records import footers as footers_module
from vllm_audit_agent.records.chain import Signer
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.records.log_start import CURSOR_NAME, read_start
from vllm_audit_agent.storage.sealed import TRAILER, TRAILER_MAGIC
from vllm_audit_agent.storage.wal import WriteAheadLog


def state_of(log: RecordLog) -> tuple[Any, ...]:
    tree = log.tree
    assert tree is not None
    return (log.head_seq, log.head_hash, log.durable_seq, log.log_id, tree.size, tree.root(),
            log.last_level, dict(log.checkpoint_roots), log._since_checkpoint,
            log.unpublished_bytes, log.replay_event_ids,
            {i: (s.first_seq, s.last_seq, s.last_time_ms, s.last_hash, s.tree_after)
             for i, s in log.segments.items()})


def sealed_files(path: Path) -> list[Path]:
    return sorted(path.glob("ingest-*.wal.zst"))


def files_of(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


def forge_last_hash(sealed: Path) -> None:
    """Rewrites a sealed segment's footer with another `last_hash` (its CRC recomputed, so the
    footer is trusted): the open segment's first record no longer follows it."""
    data = sealed.read_bytes()
    length, _, magic = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    assert magic == TRAILER_MAGIC
    start = len(data) - TRAILER.size - length
    doc = orjson.loads(data[start:start + length])
    doc["meta"]["last_hash"] = "00" * 32
    body = orjson.dumps(doc)
    sealed.write_bytes(data[:start] + body + TRAILER.pack(len(body), zlib.crc32(body),
                                                          TRAILER_MAGIC))


async def test_a_footer_the_next_record_does_not_follow_reads_the_whole_log(
        tmp_path: Path) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    written = await write_log(tmp_path, signer, 400)
    sealed = sealed_files(tmp_path)
    assert len(sealed) >= 3
    footed = open_log(tmp_path, signer)
    assert footed.counters["started_from_footers"] == len(sealed)
    assert footed.counters["footer_fallbacks"] == 0
    forge_last_hash(sealed[-1])
    whole = open_log(tmp_path, signer)
    assert whole.counters["footer_fallbacks"] == 1
    assert whole.counters["started_from_footers"] == 0
    assert whole.counters["replayed_records"] == written.head_seq
    # Nothing of the abandoned reading is kept: the log is what reading every record says.
    assert (whole.head_seq, whole.head_hash) == (written.head_seq, written.head_hash)
    assert state_of(whole) == state_of(footed)
    # Read whole, every record after the cursor (none acknowledged) is in the tail.
    assert [e.seq for e in whole._tail] == list(range(1, written.head_seq + 1))
    footed.close()
    whole.close()


async def test_a_cursor_past_the_head_or_unreadable_is_counted_and_reset(tmp_path: Path) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    written = await write_log(tmp_path, signer, 100)
    (tmp_path / CURSOR_NAME).write_text(f"{written.head_seq + 50}\n")
    past = open_log(tmp_path, signer)
    assert past.cursor == past.durable_seq == written.head_seq
    assert past.counters["cursor_past_head"] == 1 and past.unpublished_bytes == 0
    past.close()
    (tmp_path / CURSOR_NAME).write_text("not a seq\n")
    unreadable = open_log(tmp_path, signer)
    assert unreadable.cursor == 0 and unreadable.counters["cursor_unreadable"] == 1
    assert unreadable.counters["cursor_past_head"] == 0
    assert [e.seq for e in unreadable._tail][-1] == written.head_seq
    unreadable.close()


async def test_reading_a_start_changes_nothing(tmp_path: Path) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    written = await write_log(tmp_path, signer, 200)
    files = files_of(tmp_path)
    wal = WriteAheadLog(tmp_path, 1 << 30, "batch", SEGMENT_BYTES)
    try:
        first, second = (read_start(wal, tmp_path, 64 << 20) for _ in range(2))
    finally:
        wal.close()
    assert files_of(tmp_path) == files
    for start in (first, second):
        assert (start.head_seq, start.head_hash) == (written.head_seq, written.head_hash)
        assert start.log_id == written.log_id and start.last_level == "AUDIT_LEVEL_SUMMARY"
        assert start.replay_event_ids == {f"req-{i}/0" for i in range(200)}
        assert start.counters["started_from_footers"] >= 1
    assert first.tree is not None and second.tree is not None and written.tree is not None
    assert first.tree.root() == second.tree.root() == written.tree.root()


async def test_a_start_reads_back_every_segment_at_or_after_the_ingest_bound(
        tmp_path: Path, monkeypatch: Any) -> None:
    """The ingest WAL's replay is de-duplicated against the records a start reads back: with a
    time bound, every sealed segment holding a record stamped at or after it is read back,
    however many records that is, and none older once the minimum is met."""
    signer = Signer(Ed25519PrivateKey.generate())
    ticks = iter(range(10**9))
    clock = lambda: 1_000_000.0 + next(ticks)  # noqa: E731 - one second a call
    log = open_log(tmp_path, signer, clock=clock)
    for i in range(400):
        log.append(request(i))
        if i % 40 == 39:
            await log.write_pending()
    await log.write_pending()
    while await log.seal_finished() is not None:
        pass
    log.close()
    wal = WriteAheadLog(tmp_path, 1 << 30, "batch", SEGMENT_BYTES)
    sealed = {i: wal.sealed_index(i) for i in wal.segments()}
    footers = [index.meta for index in sealed.values() if index is not None]
    assert len(footers) >= 4
    monkeypatch.setattr(footers_module, "RECALL_MIN_RECORDS", 1)
    bound = int(footers[1]["last_time_ms"])  # the second sealed segment's newest record
    start = read_start(wal, tmp_path, 1 << 20, recall_since_ms=bound)
    records = [(segment, orjson.loads(p)) for segment, p in wal.replay()]
    requests = [(segment, r) for segment, r in records if "event_id" in r]
    at_or_after = {r["event_id"] for _, r in requests if r["recorded_unix_ms"] >= bound}
    second = sorted(i for i, index in sealed.items() if index is not None)[1]
    assert start.replay_event_ids == at_or_after  # all the replay could meet, nothing older
    plan = footers_module.plan_start(wal.segments(), sealed, 0, bound)
    assert plan.recall_from == second  # whole segments from the bound's on, none before
    # Without a bound the start reads back by count; with a bound of now, nothing is needed.
    everything = read_start(wal, tmp_path, 1 << 20)
    assert everything.replay_event_ids == {r["event_id"] for _, r in requests}
    assert read_start(wal, tmp_path, 1 << 20, recall_since_ms=2**62).replay_event_ids == set()
    assert footers_module.plan_start(wal.segments(), sealed, 0, 2**62).recall_from == \
        max(i for i, index in sealed.items() if index is not None)
