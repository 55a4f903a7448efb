"""Recovery of a WAL directory at open: every segment is scanned, its intact records kept, and
what is not intact is told apart, counted and set aside.

Damaged byte ranges are copied to `quarantine/<segment>.<offset>.bad` (0600), counted
(`damaged_records`, `damaged_bytes`) and the segment is rewritten atomically with its intact
records, plus a "lost" marker record where an exact count was known, so that the seq gap is
counted once and not again at the next open. An incomplete record at the very end of the
newest segment is a crash mid-append — never acknowledged — and is truncated and counted
apart (`torn_tail_bytes`); a damaged length field in the newest segment's last record looks
the same and is counted as torn too.

A sealed (compressed) segment (sealed.py) is never rewritten: recovery reads only its trailer
and index (so an open does not grow with the log's history) and takes its last seq from there;
one whose index does not check is read through once to rebuild it (counted:
`sealed_index_rebuilt`). Damage inside one is counted by the reader that meets it. A plain
segment left beside its sealed copy (a crash between the rename and the unlink) goes.
"""

from __future__ import annotations

import os
from pathlib import Path

from vllm_audit_agent.storage.datadir import FILE_MODE, private_dir, write_private_file
from vllm_audit_agent.storage.sealed import (
    SEALED_FILE,
    SealedIndex,
    read_index,
    rebuild_index,
    sealed_name,
)
from vllm_audit_agent.storage.segment_format import (
    HEADER,
    HEADER_SIZE,
    LOST_MAGIC,
    MAGIC,
    SEGMENT_FILE,
    Damage,
    Record,
    lost_marker,
    marker_first,
    scan,
    segment_name,
)

QUARANTINE_DIR = "quarantine"


def is_torn(data: bytes, damage: Damage) -> bool:
    """Damage that looks like an append cut short: it runs to the end, and there is either
    less than a header or a header whose record would end past the end of the file."""
    if damage.end != len(data) or damage.next_seq is not None:
        return False
    if len(data) - damage.start < HEADER_SIZE:
        return True
    magic, length, _, _ = HEADER.unpack_from(data, damage.start)
    return bool(magic in (MAGIC, LOST_MAGIC) and damage.start + HEADER_SIZE + length > len(data))


class Recovery:
    """One recovery of a WAL directory: `run()` repairs the segments on disk; what it found
    is left in the counters and `segments` for the log to take over."""

    def __init__(self, directory: Path, quarantine_dir: Path) -> None:
        self.directory = directory
        self.quarantine_dir = quarantine_dir
        #: index -> bytes kept, oldest first.
        self.segments: dict[int, int] = {}
        # A crash mid-append (never acknowledged) vs damage to stored records.
        self.torn_tail_bytes = 0
        self.damaged_records = 0
        self.damaged_bytes = 0
        #: index -> what a sealed segment's index says (its `segments` entry: bytes on disk).
        self.sealed: dict[int, SealedIndex] = {}
        self.sealed_index_rebuilt = 0

    def run(self) -> int:
        """Scans every segment, keeps the intact records; returns the next record seq."""
        indexes, sealed_set = self._list()
        # Lost records are counted per run of damaged ranges with no intact record between
        # them (a run may cross a segment boundary): exactly from the seq gap when the intact
        # records on both sides are known and no deleted segment lies between them (so a
        # sealed segment cut at a record boundary is counted too); else one record per range
        # (at least one: records never span segments). Segment 1 starts the log at seq 1.
        run: list[Damage] = []
        run_exact = exact = bool(indexes) and indexes[0] == 1
        last_seq: int | None = 0 if exact else None
        for position, index in enumerate(indexes):
            if position and index != indexes[position - 1] + 1:
                self._count_run(run, last_seq, None, run_exact)
                run, exact = [], False  # a deleted segment in between: its seqs are gone
            if index in sealed_set:
                found = self._open_sealed(index)
                if found.records:
                    if run:  # damage at the end of the segment before
                        self._count_run(run, last_seq, found.first_seq, run_exact)
                    run, last_seq, exact = [], found.last_seq, True
                continue
            path = self.directory / segment_name(index)
            os.chmod(path, FILE_MODE)  # tighten files an older version left 0644
            data = path.read_bytes()
            records, damage = scan(data, last_seq)
            torn = None
            if index == indexes[-1] and damage and is_torn(data, damage[-1]):
                torn = damage.pop()
                self.torn_tail_bytes += len(data) - torn.start
            events: list[Record | Damage] = sorted([*records, *damage], key=lambda e: e.start)
            markers: dict[int, bytes] = {}  # record start -> lost_marker to put before it
            for event in events:
                if isinstance(event, Record):
                    # A marker from an earlier recovery continues the gap it stands for.
                    upto = marker_first(data, event) if event.lost else event.seq
                    lost = self._count_run(run, last_seq, upto, run_exact if run else exact)
                    if lost:
                        markers[event.start] = lost_marker(upto - lost, upto - 1)
                    run, last_seq, exact = [], event.seq, True
                else:
                    if not run:
                        run_exact = exact
                    run.append(event)
                    self.damaged_bytes += event.end - event.start
                    self._quarantine(path.name, event.start, data[event.start:event.end])
            if damage or markers:
                write_private_file(path, b"".join(
                    markers.get(r.start, b"") + data[r.start:r.end] for r in records))
            elif torn is not None:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.ftruncate(fd, torn.start)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self.segments[index] = (sum(r.end - r.start for r in records)
                                    + sum(map(len, markers.values())))
        self._count_run(run, last_seq, None, run_exact)
        return (last_seq or 0) + 1

    def _list(self) -> tuple[list[int], set[int]]:
        """The segments' indexes, oldest first, and which of them are sealed."""
        indexes = []
        sealed = []
        for path in self.directory.iterdir():
            match = SEGMENT_FILE.match(path.name)
            if match:
                indexes.append(int(match.group(1)))
            elif (match := SEALED_FILE.match(path.name)) is not None:
                sealed.append(int(match.group(1)))
            elif path.name.endswith((".wal.tmp", ".wal.zst.tmp")):
                path.unlink()  # a rewrite that crashed before its rename; the original stands
        for index in sealed:
            if index in indexes:  # sealed, the plain copy not yet removed: it goes now
                indexes.remove(index)
                (self.directory / segment_name(index)).unlink()
        return sorted(indexes + sealed), set(sealed)

    def _open_sealed(self, index: int) -> SealedIndex:
        """Takes a sealed segment as its index says (rebuilt when it does not check)."""
        path = self.directory / sealed_name(index)
        found = read_index(path)
        if found is None:
            self.sealed_index_rebuilt += 1
            found = rebuild_index(path.read_bytes())
        self.sealed[index] = found
        self.segments[index] = path.stat().st_size
        return found

    def _count_run(self, run: list[Damage], prev_seq: int | None, next_seq: int | None,
                   exact: bool) -> int:
        """Counts the records lost in `run`; returns how many when known exactly."""
        if exact and prev_seq is not None and next_seq is not None:
            lost = max(0, next_seq - prev_seq - 1)
            self.damaged_records += lost
            return lost
        self.damaged_records += len(run)
        return 0

    def _quarantine(self, segment: str, offset: int, data: bytes) -> None:
        """Keeps damaged bytes for inspection; a rerun after a crash rewrites the same file."""
        private_dir(self.quarantine_dir)
        path = self.quarantine_dir / f"{segment}.{offset}.bad"
        n = 1
        while path.exists() and path.read_bytes() != data:  # a later, different damage
            path = self.quarantine_dir / f"{segment}.{offset}.{n}.bad"
            n += 1
        write_private_file(path, data)
