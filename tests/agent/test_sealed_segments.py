"""Sealed record-log segments (issue 23): finished segments compressed in frames with a footer;
a start reads footers instead of the records, readers read both forms, logs written before
(plain, no footers) still open, verify and export, and damage or a forged footer is caught."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.sealed_logs import open_log, request, write_log
from vllm_audit_agent.records.chain import Signer
from vllm_audit_agent.records.export import export
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.records.read_only import read_records
from vllm_audit_agent.records.verify import verify_chain
from vllm_audit_agent.storage.sealed import TRAILER, TRAILER_MAGIC, read_index, sealed_name


def state_of(log: RecordLog) -> tuple[Any, ...]:
    tree = log.tree
    assert tree is not None
    return (log.head_seq, log.head_hash, log.log_id, tree.size, tree.root(), log.last_level,
            dict(log.checkpoint_roots), log._since_checkpoint,
            {i: (s.first_seq, s.last_seq, s.last_time_ms, s.last_hash, s.tree_after)
             for i, s in log.segments.items()})


def sealed_files(path: Path) -> list[Path]:
    return sorted(path.glob("ingest-*.wal.zst"))


async def test_a_start_reads_footers_not_the_sealed_records(tmp_path: Path) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    written = await write_log(tmp_path, signer, 400)
    assert len(sealed_files(tmp_path)) >= 3
    again = open_log(tmp_path, signer)
    assert again.counters["started_from_footers"] == len(sealed_files(tmp_path))
    # The footers say what reading every record says.
    assert (again.head_seq, again.head_hash) == (written.head_seq, written.head_hash)
    for path in sealed_files(tmp_path):  # damaged trailers: the whole log is read
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    whole = open_log(tmp_path, signer)
    assert whole.counters["started_from_footers"] == 0
    assert whole.wal.sealed_index_rebuilt == len(sealed_files(tmp_path))
    assert whole.counters["replayed_records"] == written.head_seq
    assert state_of(again) == state_of(whole)
    again.close()
    whole.close()
    report = verify_chain(read_records(tmp_path), signer.public_key)
    assert report.intact and report.records == written.head_seq


async def test_sealed_segments_are_small_and_read_like_plain_ones(tmp_path: Path) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    sealed, plain = tmp_path / "sealed", tmp_path / "plain"
    log = await write_log(sealed, signer, 300)
    await write_log(plain, signer, 300, seal=False)
    assert not sealed_files(plain)
    plain_bytes = sum(p.stat().st_size for p in plain.glob("ingest-*"))
    sealed_bytes = sum(p.stat().st_size for p in sealed.glob("ingest-*"))
    assert sealed_bytes * 4 < plain_bytes
    records = list(read_records(sealed))
    assert len(records) == log.head_seq
    # The publisher's reads from disk seek through the sealed frames.
    reopened = open_log(sealed, signer, tail_max_bytes=1)
    read, after = [], 0
    while after < reopened.durable_seq:
        got = await reopened.read(after, 37)
        assert got
        read += [e.value for e in got]
        after = got[-1].seq
    assert read == records
    reopened.close()


async def test_a_log_written_before_sealing_opens_verifies_and_is_sealed(tmp_path: Path) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    old = await write_log(tmp_path, signer, 300, seal=False)  # as the version before wrote
    assert not sealed_files(tmp_path)
    out = io.StringIO()
    assert export(tmp_path, out) == 300
    assert verify_chain(read_records(tmp_path), signer.public_key).intact
    log = open_log(tmp_path, signer)
    assert (log.head_seq, log.head_hash) == (old.head_seq, old.head_hash)
    while await log.seal_finished() is not None:
        pass
    log.close()
    assert sealed_files(tmp_path)
    again = open_log(tmp_path, signer)
    assert again.counters["started_from_footers"] == len(sealed_files(tmp_path))
    assert (again.head_seq, again.head_hash) == (old.head_seq, old.head_hash)
    again.close()
    exported = io.StringIO()
    assert export(tmp_path, exported) == 300
    assert exported.getvalue() == out.getvalue()


async def test_a_flipped_byte_in_a_compressed_segment_is_caught(tmp_path: Path) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    await write_log(tmp_path, signer, 300)
    path = sealed_files(tmp_path)[1]
    index = read_index(path)
    assert index is not None and len(index.frames) >= 1
    data = bytearray(path.read_bytes())
    data[index.frames[0].file_offset + 40] ^= 0x01  # inside the first frame's zstd bytes
    path.write_bytes(bytes(data))
    report = verify_chain(read_records(tmp_path), signer.public_key)
    assert not report.intact
    assert report.broken is not None and report.broken.reason == "seq_gap"
    assert report.broken.seq == index.frames[0].first_seq


async def test_a_forged_footer_is_never_taken_over_the_records(tmp_path: Path) -> None:
    """A footer whose CRC was recomputed: verify ignores it; a start takes its tree, and the
    checkpoint signed over that tree disagrees with the records (tree_mismatch)."""
    signer = Signer(Ed25519PrivateKey.generate())
    await write_log(tmp_path, signer, 400)
    newest = sealed_files(tmp_path)[-1]
    data = newest.read_bytes()
    length, _, magic = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    assert magic == TRAILER_MAGIC
    start = len(data) - TRAILER.size - length
    doc = orjson.loads(data[start:start + length])
    nodes = doc["meta"]["tree_after"]["nodes"]
    nodes[-1] = "00" * 32  # a forged compact range
    body = orjson.dumps(doc)
    newest.write_bytes(data[:start] + body + TRAILER.pack(len(body), zlib.crc32(body),
                                                          TRAILER_MAGIC))
    assert verify_chain(read_records(tmp_path), signer.public_key).intact  # not read by verify
    log = open_log(tmp_path, signer)
    log.append(request(1000))
    log.checkpoint()
    await log.write_pending()
    log.close()
    report = verify_chain(read_records(tmp_path), signer.public_key)
    assert report.broken is not None and report.broken.reason == "tree_mismatch"


def test_sealed_names_and_trailer_are_fixed() -> None:
    assert sealed_name(7) == "ingest-00000007.wal.zst"
    assert TRAILER.size == struct.calcsize("<II8s") == 16


async def test_a_start_names_the_keys_of_every_erasure_record_read_or_footed(
        tmp_path: Path) -> None:
    """An erasure whose keys may still be in the key store (the agent stopped between its
    record and the deletion) is found at start, whether its segment was sealed (its footer
    keeps it) or is read."""
    from vllm_audit_agent.records.erasure import subject_erasure

    signer = Signer(Ed25519PrivateKey.generate())
    log = open_log(tmp_path, signer)
    for i in range(200):
        log.append(request(i))
    log.append_erasure(subject_erasure(log.log_id, 1, ["k-sealed"], "hmac-a", "", "ops", "t"),
                       lambda: None)
    await log.write_pending()
    for i in range(200, 400):  # pushes the first erasure into a sealed segment
        log.append(request(i))
        if i % 40 == 39:
            await log.write_pending()
    log.append_erasure(subject_erasure(log.log_id, 2, ["k-open"], "hmac-b", "", "ops", "t"),
                       lambda: None)
    log.checkpoint()
    await log.write_pending()
    while await log.seal_finished() is not None:
        pass
    log.close()
    again = open_log(tmp_path, signer)
    assert again.counters["started_from_footers"] >= 1
    assert sorted(again.erased_content_keys) == ["k-open", "k-sealed"]


async def test_access_records_count_against_their_budget_while_being_written(
        tmp_path: Path) -> None:
    """The access budget is read while a group is written — and while the write waits for a
    segment being sealed: the group's access records must count then too, or a spent budget
    reads as free and a query runs (a flaky HTTP 200 where 429 was due)."""
    from vllm_audit_agent.records.chain import RECORD_TYPE_ACCESS

    signer = Signer(Ed25519PrivateKey.generate())
    log = open_log(tmp_path, signer)
    for i in range(5):
        log.append({"schema": 2, "method": "Stats", "n": i}, kind=RECORD_TYPE_ACCESS)
    queued = log.access_bytes
    assert queued > 0
    async with log._io:  # a segment being sealed holds the log's disk
        writing = asyncio.ensure_future(log.write_pending())
        await asyncio.sleep(0.05)
        assert not writing.done()
        assert log.access_bytes == queued
    assert await writing
    assert log.access_bytes == queued
    log.close()
