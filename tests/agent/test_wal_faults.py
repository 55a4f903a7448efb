"""The WAL under damage and a full disk, on real files: a damaged record costs only itself
(counted, quarantined), a torn tail is told apart from corruption, and an append that the disk
refuses leaves the log exactly as it was."""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_harness import Hook, agent, lifecycle, query
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2
from vllm_audit_agent.storage.segment_format import HEADER_SIZE, Record, scan
from vllm_audit_agent.storage.wal import WalWriteError, WriteAheadLog

PAYLOAD = 100
RECORD = HEADER_SIZE + PAYLOAD
PER_SEGMENT = 20


def payload(i: int) -> bytes:
    return f"record-{i:05d}-".encode().ljust(PAYLOAD, b"x")


def filled(directory: Path, n: int = 5 * PER_SEGMENT) -> list[bytes]:
    """n records, PER_SEGMENT to a segment; returns what was appended."""
    wal = WriteAheadLog(directory, 1 << 30, "never", segment_bytes=PER_SEGMENT * RECORD)
    appended = [payload(i) for i in range(n)]
    for item in appended:
        wal.append(item)
    wal.close()
    return appended


def records(path: Path) -> list[Record]:
    """The segment's records (not the markers recovery leaves where it removed damage)."""
    found, damage = scan(path.read_bytes())
    assert not damage
    return [r for r in found if not r.lost]


def markers(path: Path) -> list[tuple[int, int]]:
    """(first, last) seq of each run of lost records recovery recorded in the segment."""
    data = path.read_bytes()
    return [struct.unpack_from("<QQ", data, r.start + HEADER_SIZE)
            for r in scan(data)[0] if r.lost]


def segment(directory: Path, index: int) -> Path:
    return directory / f"ingest-{index:08d}.wal"


def payloads(wal: WriteAheadLog) -> list[bytes]:
    return [p for _, p in wal.replay()]


def quarantined(directory: Path) -> dict[str, bytes]:
    q = directory / "quarantine"
    return {p.name: p.read_bytes() for p in sorted(q.iterdir())} if q.exists() else {}


def test_a_flipped_byte_costs_one_record_and_keeps_every_other(tmp_path: Path) -> None:
    appended = filled(tmp_path)
    path = segment(tmp_path, 3)
    victim = records(path)[9]  # record 10 of 20 in segment 3 of 5
    data = bytearray(path.read_bytes())
    data[victim.start + HEADER_SIZE + 50] ^= 0x01
    path.write_bytes(bytes(data))

    wal = WriteAheadLog(tmp_path, 1 << 30, "never")
    lost = 2 * PER_SEGMENT + 9
    assert payloads(wal) == appended[:lost] + appended[lost + 1:]
    assert (wal.damaged_records, wal.damaged_bytes, wal.torn_tail_bytes) == (1, RECORD, 0)
    # The damaged bytes are kept, as they were on disk, owner-only.
    assert quarantined(tmp_path) == {
        f"ingest-00000003.wal.{victim.start}.bad": bytes(data[victim.start:victim.end])}
    assert (tmp_path / "quarantine" / f"ingest-00000003.wal.{victim.start}.bad"
            ).stat().st_mode & 0o777 == 0o600
    # The segment was rewritten with its intact records and a marker in place of the lost
    # one (so the next open does not count it again); the log goes on from there.
    assert len(records(path)) == PER_SEGMENT - 1
    assert markers(path) == [(lost + 1, lost + 1)]
    wal.append(b"after")
    wal.close()
    again = WriteAheadLog(tmp_path, 1 << 30, "never")
    assert payloads(again) == appended[:lost] + appended[lost + 1:] + [b"after"]
    assert (again.damaged_records, again.damaged_bytes, again.torn_tail_bytes) == (0, 0, 0)
    again.close()


def test_a_zeroed_block_is_counted_by_the_seq_gap_and_never_read_as_records(
    tmp_path: Path,
) -> None:
    appended = filled(tmp_path)
    path = segment(tmp_path, 2)
    found = records(path)
    data = bytearray(path.read_bytes())
    # 512 zero bytes from the middle of record 5: records 5..9 of the segment are hit (the
    # old framing read such a run as valid empty records: CRC32 of nothing is 0).
    start = found[4].start + 60
    data[start:start + 512] = bytes(512)
    path.write_bytes(bytes(data))
    hit = [i for i, r in enumerate(found) if r.start < start + 512 and r.end > start]
    assert hit == [4, 5, 6, 7, 8]

    wal = WriteAheadLog(tmp_path, 1 << 30, "never")
    first = PER_SEGMENT + 4
    assert payloads(wal) == appended[:first] + appended[first + len(hit):]
    assert wal.damaged_records == len(hit)
    assert wal.damaged_bytes == found[hit[-1]].end - found[hit[0]].start
    assert wal.torn_tail_bytes == 0
    assert list(quarantined(tmp_path)) == [f"ingest-00000002.wal.{found[4].start}.bad"]
    wal.close()


def test_a_torn_tail_of_the_newest_segment_is_truncated_not_counted_as_damage(
    tmp_path: Path,
) -> None:
    appended = filled(tmp_path)
    path = segment(tmp_path, 5)
    last = records(path)[-1]
    with open(path, "r+b") as f:  # a crash mid-append: the last record half written
        f.truncate(last.start + 30)

    wal = WriteAheadLog(tmp_path, 1 << 30, "never")
    assert payloads(wal) == appended[:-1]
    assert (wal.torn_tail_bytes, wal.damaged_records, wal.damaged_bytes) == (30, 0, 0)
    assert quarantined(tmp_path) == {}
    assert path.stat().st_size == last.start
    wal.append(b"next")
    wal.close()
    again = WriteAheadLog(tmp_path, 1 << 30, "never")
    assert payloads(again) == [*appended[:-1], b"next"]
    assert (again.torn_tail_bytes, again.damaged_records) == (0, 0)
    again.close()


def test_a_cut_in_a_sealed_segment_is_damage_counted_exactly(tmp_path: Path) -> None:
    appended = filled(tmp_path)
    path = segment(tmp_path, 2)
    cut = records(path)[12]
    with open(path, "r+b") as f:  # records 13..20 of segment 2: 7 bytes of 13 remain
        f.truncate(cut.start + 7)

    wal = WriteAheadLog(tmp_path, 1 << 30, "never")
    first = PER_SEGMENT + 12
    assert payloads(wal) == appended[:first] + appended[2 * PER_SEGMENT:]
    # Exactly: the seq gap up to the first record of segment 3.
    assert (wal.damaged_records, wal.damaged_bytes, wal.torn_tail_bytes) == (8, 7, 0)
    assert list(quarantined(tmp_path)) == [f"ingest-00000002.wal.{cut.start}.bad"]
    wal.close()


def test_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    old = os.umask(0)
    try:
        filled(directory, PER_SEGMENT + 1)
        os.chmod(segment(directory, 1), 0o644)  # as an older version left them
        os.chmod(directory, 0o755)
        wal = WriteAheadLog(directory, 1 << 30, "never", segment_bytes=PER_SEGMENT * RECORD)
        for _ in range(PER_SEGMENT):
            wal.append(payload(0))  # into a third segment, created under umask 0
        wal.close()
    finally:
        os.umask(old)
    assert directory.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()} == {
        "ingest-00000001.wal": 0o600, "ingest-00000002.wal": 0o600,
        "ingest-00000003.wal": 0o600}


# -- a real full disk: a small tmpfs ------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(directory: Path, options: str) -> Iterator[Path]:
    directory.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root / CAP_SYS_ADMIN): {exc}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True, timeout=30)


def log_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("ingest-*.wal"))}


@pytest.mark.parametrize("segment_bytes", [1 << 20, 48 << 10], ids=["mid-segment", "rotating"])
def test_a_full_disk_refuses_the_append_and_leaves_the_log_as_it_was(
    tmp_path: Path, segment_bytes: int,
) -> None:
    with tmpfs(tmp_path / "disk", "size=256k,mode=0700") as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(bytes(64 << 10))
        wal = WriteAheadLog(disk / "wal", 1 << 30, "batch", segment_bytes=segment_bytes)
        acked: list[bytes] = []
        body = os.urandom(1000)  # 1 KiB records: most appends cross a page boundary
        try:
            for i in range(1000):
                before = log_bytes(disk / "wal")
                item = i.to_bytes(4, "little") + body
                try:
                    wal.append(item)
                    wal.sync()
                except WalWriteError as exc:
                    failure = exc
                    break
                acked.append(item)
            else:
                pytest.fail("a 256 KiB tmpfs took 1 MiB of records")
            assert failure.reason == "disk_full"
            assert log_bytes(disk / "wal") == before  # no partial record left behind
            assert not wal.healthy and wal.last_error.startswith("disk_full")
            assert wal.failed_appends == {"disk_full": 1, "disk_error": 0}
            # Still full: refused again, still unchanged.
            with pytest.raises(WalWriteError):
                wal.append(item)
            assert log_bytes(disk / "wal") == before
            ballast.unlink()  # the operator frees space
            for j in range(len(acked), len(acked) + 20):
                item = j.to_bytes(4, "little") + body
                wal.append(item)
                wal.sync()
                acked.append(item)
            assert wal.healthy
        finally:
            wal.close()
        again = WriteAheadLog(disk / "wal", 1 << 30, "batch")
        assert payloads(again) == acked
        assert (again.damaged_records, again.torn_tail_bytes) == (0, 0)
        again.close()


def test_a_run_of_records_the_full_disk_refuses_is_rolled_back_whole(tmp_path: Path) -> None:
    """The record log writes its records in runs (`append_many`, one writev): a run the
    disk cannot hold leaves nothing of itself, the runs before it stay, and the log goes on
    once there is room."""
    with tmpfs(tmp_path / "disk", "size=256k,mode=0700") as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(bytes(64 << 10))
        wal = WriteAheadLog(disk / "wal", 1 << 30, "batch", segment_bytes=1 << 20)
        acked: list[bytes] = []
        body = os.urandom(1000)
        try:
            for run in range(200):
                before = log_bytes(disk / "wal")
                items = [(run * 10 + k).to_bytes(4, "little") + body for k in range(10)]
                segments, refusal = wal.append_many(items)
                if refusal is None:
                    wal.sync()
                    acked += items
                    continue
                assert isinstance(refusal, WalWriteError) and refusal.reason == "disk_full"
                assert segments == []  # the run was one write: none of it went in
                assert log_bytes(disk / "wal") == before
                break
            else:
                pytest.fail("a 256 KiB tmpfs took 2 MiB of records")
            ballast.unlink()
            segments, refusal = wal.append_many(items)
            assert refusal is None and segments == [1] * 10
            wal.sync()
            acked += items
        finally:
            wal.close()
        again = WriteAheadLog(disk / "wal", 1 << 30, "batch")
        assert payloads(again) == acked
        assert (again.damaged_records, again.torn_tail_bytes) == (0, 0)
        again.close()


def test_a_failed_rotation_leaves_the_log_usable(tmp_path: Path) -> None:
    # Out of inodes: the next segment cannot be created, while the current one has room.
    with tmpfs(tmp_path / "disk", "size=1m,nr_inodes=5,mode=0700") as disk:
        wal = WriteAheadLog(disk / "wal", 1 << 30, "batch", segment_bytes=4 * RECORD)
        fillers = []
        with contextlib.suppress(OSError):
            for n in range(10):
                fillers.append(disk / f"filler-{n}")
                fillers[-1].touch()
        fillers.pop()  # the one that failed
        try:
            for i in range(4):
                wal.append(payload(i))
            with pytest.raises(WalWriteError) as refused:
                wal.append(payload(4))
            assert refused.value.reason == "disk_full"
            assert (wal.segments(), wal.current, wal.healthy) == ([1], 1, False)
            fillers.pop().unlink()
            assert wal.append(payload(4)) == 2
            assert wal.healthy
        finally:
            wal.close()
        again = WriteAheadLog(disk / "wal", 1 << 30, "batch")
        assert payloads(again) == [payload(i) for i in range(5)]
        again.close()


async def test_the_agent_replays_every_intact_batch_after_a_damaged_one(tmp_path: Path) -> None:
    """The real agent: 33 acknowledged batches, a byte flipped in a middle one of a middle
    segment; after a restart every other trail is back and the loss is counted."""
    def rid(seq: int) -> str:
        return f"{seq}-fl1p0000"

    async with agent(tmp_path, wal_segment_bytes=1000) as (handle, _), \
            Hook(handle.state.config.ingest_socket) as hook:
        for seq in range(1, 34):
            reply = await hook.send(seq, lifecycle(rid(seq), pb.LIFECYCLE_PHASE_FINISHED,
                                                   10**15, finish_reason="stop"))
            assert not reply.ack.refused
    data = tmp_path / "data"
    segments = sorted(data.glob("ingest-*.wal"))
    assert len(segments) >= 3
    middle = segments[len(segments) // 2]
    found = records(middle)
    victim = found[len(found) // 2]
    raw = bytearray(middle.read_bytes())
    raw[victim.end - 3] ^= 0xFF
    middle.write_bytes(bytes(raw))
    lost_seq = sum(len(records(p)) for p in segments[:len(segments) // 2]) + len(found) // 2 + 1

    async with agent(tmp_path, wal_segment_bytes=1000) as (handle, _):
        wal = handle.state.wal
        assert (wal.damaged_records, wal.damaged_bytes) == (1, victim.end - victim.start)
        assert handle.state.counters["wal_replayed_batches"] == 32
        trails = await query(handle).ListTrails(query_pb2.ListTrailsRequest(page_size=100))
        assert sorted(t.request_id for t in trails.trails) == sorted(
            rid(seq) for seq in range(1, 34) if seq != lost_seq)
        assert len(quarantined(data)) == 1
