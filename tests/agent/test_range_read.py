"""A time range of a record log read by its sealed segments' footers and index (issue 23, item
2): `export --since` and `verify --since` open only the segments and frames that can hold the
range, give what a read from the log's start gives, and a forged footer never makes a range
verify say intact for records it skipped or changed."""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vllm_audit_agent.cli.main import main
from vllm_audit_agent.records.chain import Signer, public_pem
from vllm_audit_agent.records.export import export
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.records.range_read import RangeStats, read_since, through_checkpoint_after
from vllm_audit_agent.records.read_only import read_records
from vllm_audit_agent.records.verify import verify_chain
from vllm_audit_agent.storage.sealed import (
    TRAILER,
    TRAILER_MAGIC,
    SealedIndex,
    pack_sealed,
    read_index,
    walk_frames,
    write_file,
)
from vllm_audit_agent.storage.segment_format import HEADER_SIZE, encode, scan

RECORDS = 6000
T0 = 1_790_000_000.0


def request(i: int) -> dict[str, Any]:
    return {"schema": 1, "request_id": f"req-{i}", "trail_id": f"req-{i}", "latency_ms": 12.5,
            "model": "tiny", "user": f"user-{i % 7}", "prompt": f"prompt {i} " * 60}


class Clock:
    """A second per call: every record a time of its own, in the log's order."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


async def write_log(path: Path, signer: Signer) -> None:
    """~6 sealed segments of 1 MiB, each ~4 frames (of 256 KiB), and the open one."""
    log = RecordLog(path, 1 << 30, "batch", signer, checkpoint_every=100,
                    segment_bytes=1 << 20, clock=Clock())
    for i in range(RECORDS):
        log.append(request(i))
        if i % 100 == 99:
            await log.write_pending()
    log.checkpoint()
    await log.write_pending()
    while await log.seal_finished() is not None:
        pass
    log.close()


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Path:
    import asyncio

    path = tmp_path_factory.mktemp("range") / "records"
    asyncio.run(write_log(path, signer))
    return path


@pytest.fixture
def log_dir(written: Path, tmp_path: Path) -> Path:
    """A copy each test may damage."""
    import shutil

    return Path(shutil.copytree(written, tmp_path / "records"))


def times(path: Path) -> list[tuple[int, int, str]]:
    """(seq, recorded ms, type) of every record, read from the log's start."""
    return [(r["seq"], r["recorded_unix_ms"], r["type"])
            for r in map(orjson.loads, read_records(path))]


def indexes(path: Path) -> dict[int, SealedIndex]:
    out = {}
    for file in sorted(path.glob("ingest-*.wal.zst")):
        index = read_index(file)
        assert index is not None
        out[int(file.name[7:15])] = index
    return out


def middle_range(path: Path) -> tuple[int, int, int]:
    """(first seq, since, until) of a range in the middle of the log: from a record in the
    third frame of a sealed segment past the middle, about 700 records long."""
    seen = {seq: when for seq, when, _ in times(path)}
    sealed = indexes(path)
    holder = sealed[sorted(sealed)[len(sealed) // 2]]
    first = holder.frames[2].first_seq + 3
    return first, seen[first], seen[first + 700]


def full_scan(path: Path) -> Any:
    """What export read before: the log from its start (a reader it cannot seek)."""
    return lambda: read_records(path)


def test_a_range_opens_only_the_segments_and_frames_that_hold_it(log_dir: Path) -> None:
    sealed = indexes(log_dir)
    assert len(sealed) >= 5 and all(len(i.frames) >= 3 for i in sealed.values())
    first_in, since, until = middle_range(log_dir)
    # The exported bytes are those a read from the log's start exports.
    stats = RangeStats()
    out, whole = io.StringIO(), io.StringIO()
    assert export(log_dir, out, since, until, stats=stats) == export(full_scan(log_dir), whole,
                                                                     since, until)
    assert out.getvalue() == whole.getvalue() and out.getvalue()
    assert not stats.fallback
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["seq"] == first_in and lines[-1]["type"] == "checkpoint"
    # Opened: from the frame before the one holding the range's first record (it holds the
    # record before it) to the one holding the checkpoint after the range; every other
    # segment and frame stays shut.
    holder = next(i for i in sealed.values() if i.first_seq <= first_in <= i.last_seq)
    start = next(f for f in holder.frames if f.last_seq >= first_in).first_seq - 1
    last = lines[-1]["seq"]
    assert stats.start_seq is not None and stats.start_seq <= start
    wanted = {n: [f for f in i.frames if f.last_seq >= start and f.first_seq <= last]
              for n, i in sealed.items()}
    wanted = {n: frames for n, frames in wanted.items() if frames}
    assert len(wanted) < len(sealed) / 2
    assert stats.counts.segments == len(wanted)  # the range ends in sealed segments
    assert stats.counts.frames == sum(map(len, wanted.values()))
    landing = min(wanted)
    assert stats.segments_skipped == landing - min(sealed)
    assert stats.frames_skipped == sealed[landing].frames.index(wanted[landing][0]) > 0
    assert stats.indexes_read == landing - min(sealed) + 1
    # CSV and the SIEM formats read the same range the same way.
    for fmt in ("csv", "ocsf"):
        got, want = io.StringIO(), io.StringIO()
        export(log_dir, got, since, until, fmt)
        export(full_scan(log_dir), want, since, until, fmt)
        assert got.getvalue() == want.getvalue()


def test_a_range_verify_checks_what_it_reads_and_says_what_it_did_not(
        log_dir: Path, signer: Signer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    first_in, since, until = middle_range(log_dir)
    stats = RangeStats()
    report = verify_chain(through_checkpoint_after(read_since(log_dir, since, stats), until),
                          signer.public_key)
    assert report.intact, report.broken
    assert report.first_seq == stats.start_seq and report.first_seq is not None
    assert 1 < report.first_seq < first_in and report.checkpoints >= 1
    # The CLI: the same, and the records before the start are named as not checked.
    public = tmp_path / "log.pub"
    public.write_bytes(public_pem(signer.public_key))
    assert main(["verify", str(log_dir), "--public-key", str(public),
                 "--since", str(since), "--until", str(until)]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["intact"] and out["first_seq"] == report.first_seq
    assert any(f"started at seq {report.first_seq}" in note and "not checked" in note
               for note in out["notes"])
    # A range verify takes a record log directory (or the fleet store), not an export file.
    export_file = tmp_path / "all.jsonl"
    with open(export_file, "w") as f:
        export(log_dir, f)
    assert main(["verify", str(export_file), "--public-key", str(public),
                 "--since", str(since)]) == 2


def _rewrite_index(path: Path, change: Any) -> None:
    """The sealed segment's index changed by `change(doc)`, its CRC made to match: a forgery
    by someone who can write the data directory."""
    data = path.read_bytes()
    length, _, magic = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    assert magic == TRAILER_MAGIC
    start = len(data) - TRAILER.size - length
    doc = orjson.loads(data[start:start + length])
    change(doc)
    body = orjson.dumps(doc)
    path.write_bytes(data[:start] + body + TRAILER.pack(len(body), zlib.crc32(body),
                                                        TRAILER_MAGIC))


def test_a_forged_footer_that_hides_the_range_is_caught_by_the_records(
        log_dir: Path, signer: Signer) -> None:
    """A footer saying the segment that holds the range's start is older than the range: the
    first record read there is not older than the range, so the log is read from its start
    (the same export a whole read gives, every record of the range verified)."""
    sealed = indexes(log_dir)
    first_in, since, until = middle_range(log_dir)
    holder = next(n for n, i in sealed.items() if i.first_seq <= first_in <= i.last_seq)

    def older(doc: dict[str, Any]) -> None:
        doc["meta"]["last_time_ms"] = since - 1
        doc["meta"]["time_marks"] = [[doc["last_seq"], since - 1]]

    _rewrite_index(log_dir / f"ingest-{holder:08d}.wal.zst", older)
    stats = RangeStats()
    out, whole = io.StringIO(), io.StringIO()
    export(log_dir, out, since, until, stats=stats)
    export(full_scan(log_dir), whole, since, until)
    assert out.getvalue() == whole.getvalue()
    assert stats.fallback and stats.start_seq is None
    verified = RangeStats()
    report = verify_chain(through_checkpoint_after(read_since(log_dir, since, verified), until),
                          signer.public_key)
    assert report.intact and report.first_seq == 1 and verified.fallback


def _frames(path: Path) -> Iterator[bytes]:
    for frame in walk_frames(path.read_bytes()):
        assert frame.raw is not None
        yield frame.raw


def test_a_forged_footer_never_makes_a_changed_record_of_the_range_intact(
        log_dir: Path, signer: Signer) -> None:
    """A record of the range changed, its segment rewritten whole with valid CRCs and zstd
    checksums and a footer that points the read past nothing: verify of the range breaks at
    the changed record; verify never claims the records it skipped."""
    sealed = indexes(log_dir)
    first_in, since, until = middle_range(log_dir)
    victim = first_in + 5
    holder = next(n for n, i in sealed.items() if i.first_seq <= victim <= i.last_seq)
    path = log_dir / f"ingest-{holder:08d}.wal.zst"
    raw = b"".join(_frames(path))
    records, _ = scan(raw)
    parts = []
    for r in records:
        payload = raw[r.start + HEADER_SIZE:r.end]
        if r.seq == victim:
            payload = payload.replace(b'"latency_ms":12.5', b'"latency_ms":99.5')
            assert payload != raw[r.start + HEADER_SIZE:r.end]
        parts.append(encode(r.seq, payload))
    data = b"".join(parts)
    rebuilt, _ = scan(data)
    meta = sealed[holder].meta
    meta["time_marks"] = []  # forged too: no say where the range starts
    packed, _ = pack_sealed(data, rebuilt, meta)
    write_file(path, packed, fsync=False)
    stats = RangeStats()
    report = verify_chain(through_checkpoint_after(read_since(log_dir, since, stats), until),
                          signer.public_key)
    assert report.broken is not None and report.broken.reason == "hash_mismatch"
    assert report.broken.seq == victim
    assert report.first_seq == stats.start_seq and report.first_seq is not None
    assert report.first_seq < first_in  # what it reads it checks; what it skips, it says
