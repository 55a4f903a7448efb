"""Property tests of the WAL's framing and recovery on real files: whatever happens to the
bytes, recovery never raises, never returns a payload that was not appended, returns the
records in order, recovers every record whose bytes were left alone, and never counts more
records lost than were."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_audit_agent.storage.segment_format import HEADER_SIZE, encode, scan
from vllm_audit_agent.storage.wal import WalFull, WriteAheadLog
from vllm_audit_agent.storage.wal_reader import Position

SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

payload_lists = st.lists(st.binary(max_size=150), max_size=30)
segment_sizes = st.integers(min_value=HEADER_SIZE, max_value=800)


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("ingest-*.wal"))


def replayed(directory: Path, segment_bytes: int) -> list[bytes]:
    wal = WriteAheadLog(directory, 1 << 30, "never", segment_bytes)
    try:
        assert (wal.damaged_records, wal.damaged_bytes, wal.torn_tail_bytes) == (0, 0, 0)
        return [p for _, p in wal.replay()]
    finally:
        wal.close()


@SETTINGS
@given(st.lists(st.tuples(st.integers(1, 2**64 - 1), st.binary(max_size=300)), max_size=20))
def test_encode_then_scan_round_trips(items: list[tuple[int, bytes]]) -> None:
    items = sorted(dict(items).items())  # seqs only grow
    data = b"".join(encode(seq, payload) for seq, payload in items)
    records, damage = scan(data)
    assert not damage
    assert [(r.seq, data[r.start + HEADER_SIZE:r.end]) for r in records] == items


@SETTINGS
@given(payload_lists, payload_lists, segment_sizes)
def test_records_round_trip_across_segments_and_restarts(
    first: list[bytes], second: list[bytes], segment_bytes: int,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        wal = WriteAheadLog(directory, 1 << 30, "never", segment_bytes)
        for payload in first:
            wal.append(payload)
        wal.close()
        assert replayed(directory, segment_bytes) == first
        wal = WriteAheadLog(directory, 1 << 30, "batch", segment_bytes)
        for payload in second:
            wal.append(payload)
            wal.sync()
        wal.close()
        assert replayed(directory, segment_bytes) == first + second
        # One sequence for the whole log: 1, 2, … across segments and the restart.
        seqs = [r.seq for path in segment_files(directory) for r in scan(path.read_bytes())[0]]
        assert seqs == list(range(1, len(first) + len(second) + 1))


position = st.integers(min_value=0, max_value=10**6)
mutations = st.lists(st.one_of(
    st.tuples(st.just("flip"), position, position, st.integers(1, 255)),
    st.tuples(st.just("zero"), position, position, st.integers(1, 400)),
    st.tuples(st.just("cut"), position, position, st.just(0)),
), min_size=1, max_size=4)


def apply_damage(data: bytearray, kind: str, offset: int, value: int) -> None:
    """One mutation of a segment's bytes: flip a byte, zero a block, or cut the rest."""
    if not data:
        return
    at = offset % len(data)
    if kind == "flip":
        data[at] ^= value
    elif kind == "zero":
        data[at:at + value] = bytes(len(data[at:at + value]))
    else:
        del data[at:]


@SETTINGS
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=40), segment_sizes, mutations)
def test_recovery_survives_any_damage_and_keeps_every_untouched_record(
    bodies: list[bytes], segment_bytes: int, damage: list[tuple[str, int, int, int]],
) -> None:
    # Each payload is tagged with its index, so each one is told apart from every other.
    appended = [i.to_bytes(2, "big") + body for i, body in enumerate(bodies)]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        wal = WriteAheadLog(directory, 1 << 30, "never", segment_bytes)
        for payload in appended:
            wal.append(payload)
        wal.close()
        files = segment_files(directory)
        before = {path: path.read_bytes() for path in files}
        # Where each record is: (file, start, end), in append order.
        where = [(path, r.start, r.end) for path in files for r in scan(before[path])[0]]
        assert len(where) == len(appended)

        after = {path: bytearray(data) for path, data in before.items()}
        for kind, file_pick, offset, value in damage:
            apply_damage(after[files[file_pick % len(files)]], kind, offset, value)
        for path, data in after.items():
            path.write_bytes(bytes(data))
        untouched = [i for i, (path, start, end) in enumerate(where)
                     if bytes(after[path][start:end]) == before[path][start:end]]

        wal = WriteAheadLog(directory, 1 << 30, "never", segment_bytes)  # never raises
        got = [p for _, p in wal.replay()]
        tags = [int.from_bytes(p[:2], "big") for p in got]
        # Only what was appended, in order, each at most once; every untouched record.
        assert all(0 <= t < len(appended) and appended[t] == p for t, p in zip(tags, got, strict=True))
        assert tags == sorted(set(tags))
        assert set(untouched) <= set(tags)
        # Losses are never over-counted, and a loss is never silent unless whole records
        # vanished off the end of the log (indistinguishable from never written).
        assert len(got) + wal.damaged_records <= len(appended)
        vanished = 0
        for path, start, _ in reversed(where):
            if start < len(after[path]):
                break
            vanished += 1
        if len(appended) - len(got) > vanished:
            assert wal.damaged_records > 0 or wal.torn_tail_bytes > 0
        # The damaged bytes are all in quarantine.
        quarantine = directory / "quarantine"
        kept = sum(p.stat().st_size for p in quarantine.iterdir()) if quarantine.exists() else 0
        assert kept == wal.damaged_bytes
        wal.append(b"\xff\xff after")
        wal.close()
        # Recovery left a clean log that goes on: nothing damaged at the next open.
        assert replayed(directory, segment_bytes) == [*got, b"\xff\xff after"]


@SETTINGS
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=40), segment_sizes, mutations,
       st.integers(min_value=1, max_value=3000))
def test_reads_from_a_position_give_what_replay_gives(
    bodies: list[bytes], segment_bytes: int, damage: list[tuple[str, int, int, int]],
    max_bytes: int,
) -> None:
    """The record log's publisher reads on from where its last read stopped; over a log
    damaged since it was opened, that gives the records (and counts the damage) a replay
    from the start gives, whatever the read size."""
    appended = [i.to_bytes(2, "big") + body for i, body in enumerate(bodies)]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        wal = WriteAheadLog(directory, 1 << 30, "never", segment_bytes)
        try:
            for payload in appended:
                wal.append(payload)
            for kind, file_pick, offset, value in damage:
                files = segment_files(directory)
                path = files[file_pick % len(files)]
                data = bytearray(path.read_bytes())
                apply_damage(data, kind, offset, value)
                path.write_bytes(bytes(data))
            expected = [p for _, p in wal.replay()]
            damaged_by_replay = wal.damaged_records
            got: list[bytes] = []
            at = Position(min(wal.segments()), 0, None)
            while True:
                part, at = wal.read_from(at, max_bytes)
                if not part:
                    break
                got += [p for *_, p in part]
            assert got == expected
            assert wal.damaged_records - damaged_by_replay == damaged_by_replay
        finally:
            wal.close()


@SETTINGS
@given(st.lists(st.lists(st.binary(max_size=200), max_size=12), max_size=6), segment_sizes,
       st.integers(min_value=HEADER_SIZE, max_value=6000), st.sampled_from(["never", "always"]))
def test_append_many_writes_what_appending_one_by_one_writes(
    groups: list[list[bytes]], segment_bytes: int, max_bytes: int, fsync: str,
) -> None:
    """Runs of records written with one writev: the same segments, bytes and refusals (at
    the size cap) as one append per record."""
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        one, many = (WriteAheadLog(Path(d), max_bytes, fsync, segment_bytes) for d in (a, b))
        try:
            for group in groups:
                expected: list[int] = []
                refused: type[Exception] | None = None
                for payload in group:
                    try:
                        expected.append(one.append(payload))
                    except WalFull as exc:
                        refused = type(exc)
                        break
                got, refusal = many.append_many(group)
                assert got == expected
                assert (type(refusal) if refusal else None) == refused
                if refused:
                    assert one.refused_appends == many.refused_appends
        finally:
            one.close()
            many.close()
        for x, y in zip(segment_files(Path(a)), segment_files(Path(b)), strict=True):
            assert x.name == y.name and x.read_bytes() == y.read_bytes()
        assert replayed(Path(b), segment_bytes) == replayed(Path(a), segment_bytes)
