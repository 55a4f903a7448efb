"""The consumer's write path in two stages, so one batch's verification overlaps the previous
batch's insert: `prepare` (the verifier fed, the logs' states taken, the store's columns built
from the verifier's parse of each record — one parse per record, rows.py —: Python work, under
the GIL) and `write` (chDB's insert, which releases the GIL while
ClickHouse works, then the logs' states saved). The consumer prepares batch k+1 in one thread
while batch k is written in another; batches are written, and their offsets committed, in
order, each only after the one before is stored.

The verifier reads records back from the store (a re-delivered record is compared with the one
verified at its seq, a cosignature with the checkpoint it signs). While batch k is written
those records may be in no table yet: `Unstored` answers them from the batches prepared and
not yet stored, so verifying k+1 sees exactly what it would see had k been stored first.

Where a record's time goes (scripts/bench_fleet.py prints it; two shared cores): `prepare` is
the bound, ~24 µs a record — orjson's parse ~6 (once: the verifier's parse routes the record,
gives verify_chain its chain fields and fills the columns; parsing twice and reading the chain
fields a third time from the bytes cost ~14 more), the record hash and Merkle leaf ~4.6, the
columns ~5.5, the checks, tree and routing ~4 —, while `write` (chDB's insert, mostly the
`record` column's ZSTD) takes ~9 to 11 µs and waits for it. Measured and not taken: ClickHouse
building the columns from the bytes (an `INSERT … SELECT JSONExtract(record, 'Tuple(…)')` of
6 of the 19 columns cost ~6 µs of its CPU a record, where Python builds all 19 in ~4, and its
functions cannot give Python's values for odd types — a number in a text field, a list —
which the column contract fixes); a second process for the columns (it parses again: on two
cores the sum of the CPU, ~40 µs a record, becomes the bound instead). What is left is
Python's per-record cost of the parse, the two hashes and the columns.

Each batch carries the states of its logs as they were right after it was fed: a state saved
never names a head past what the store holds (a restart reads the records after the saved head
back from the store, and the verifier never stores again a record at or below its head).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from vllm_audit_agent.fleet.findings import FleetDetections
from vllm_audit_agent.fleet.rows import Rows
from vllm_audit_agent.fleet.store import FleetStore
from vllm_audit_agent.fleet.verifier import FleetVerifier, RecordSource


@dataclass
class Prepared:
    """A batch fed to the verifier, ready for the store."""
    payloads: list[bytes]  # as consumed: fed again if the store refuses the batch
    offsets: dict[Any, int]  # partition -> the offset to commit once stored
    store: list[bytes] = field(default_factory=list)  # what the verifier says to keep
    rows: pa.Table | None = None  # `store` as the records table's columns
    states: list[dict[str, Any]] = field(default_factory=list)  # changed logs, as of this batch

    @property
    def idle(self) -> bool:
        """Nothing to store, save or commit."""
        return not (self.store or self.states or self.offsets)


class _Batch:
    """An unstored batch's records, indexed by (log_id, seq) only when the store lacks one
    asked for (rare: a re-delivery or a cosignature of a record in the batch just before)."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.payloads = payloads
        self._index: dict[tuple[str, int], bytes] | None = None

    def at(self, log_id: str, seq: int) -> bytes | None:
        if self._index is None:
            index: dict[tuple[str, int], bytes] = {}
            for payload in self.payloads:
                try:
                    record = orjson.loads(payload)
                    key = (str(record.get("log_id") or ""), int(record["seq"]))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError,
                        AttributeError):
                    continue
                index.setdefault(key, payload)  # the first copy: the one the store keeps
            self._index = index
        return self._index.get((log_id, seq))


class Unstored:
    """The verifier's record source: the store, then the batches prepared and not stored yet."""

    def __init__(self, source: RecordSource) -> None:
        self.source = source
        self._batches: list[_Batch] = []
        self._lock = threading.Lock()  # prepare and write run in two threads

    def add(self, payloads: list[bytes]) -> None:
        if payloads:
            with self._lock:
                self._batches.append(_Batch(payloads))

    def stored(self, payloads: list[bytes]) -> None:
        with self._lock:
            self._batches = [b for b in self._batches if b.payloads is not payloads]

    def clear(self) -> None:
        with self._lock:
            self._batches.clear()

    def records_of(self, log_id: str, after_seq: int, limit: int = 100_000) -> list[bytes]:
        # Only a restart or a reload reads a log's tail, with no batch in flight.
        return self.source.records_of(log_id, after_seq, limit)

    def records_at(self, log_id: str, seqs: Sequence[int]) -> dict[int, bytes]:
        # The batches as they are before the store is asked: one stored meanwhile is still in
        # this copy (batches are added by prepare only, which is the caller).
        with self._lock:
            batches = list(self._batches)
        found = self.source.records_at(log_id, seqs)
        for seq in seqs:
            if seq in found:
                continue
            for batch in batches:
                payload = batch.at(log_id, seq)
                if payload is not None:
                    found[seq] = payload
                    break
        return found


class WritePath:
    """Prepare and write; `prepare` calls run one at a time, and so do `write` calls."""

    def __init__(self, store: FleetStore, verifier: FleetVerifier,
                 detections: FleetDetections | None = None) -> None:
        self.store, self.verifier, self.detections = store, verifier, detections
        self.unstored = Unstored(verifier.source)
        verifier.source = self.unstored

    def prepare(self, payloads: list[bytes], offsets: dict[Any, int]) -> Prepared:
        """Feeds `payloads` (may be none: the gaps of quiet logs are looked for all the same)."""
        # One parse per record: the verifier hands each record it keeps to the columns.
        built = Rows(time.time_ns() // 1_000_000)
        fed = self.verifier.feed(payloads, built.add)
        changed = fed.changed | self.verifier.gaps()
        self.unstored.add(fed.store)
        rows = built.table() if fed.store else None
        return Prepared(payloads, offsets, fed.store, rows, self.verifier.states(changed))

    def write(self, batch: Prepared) -> int:
        """Stores the batch and its logs' states; the rows written."""
        written = self.store.insert_rows(batch.store, batch.rows) if batch.rows else 0
        if self.detections is not None and batch.store:
            self.detections.feed(batch.store)
        self.store.save_logs(batch.states)
        self.unstored.stored(batch.store)
        return written

    def reload(self) -> None:
        """The logs' states as the store has them (after a batch it refused): the store is the
        truth, what was prepared and not stored is fed again."""
        self.unstored.clear()
        self.verifier.logs.clear()
        self.verifier.load(self.store.logs())
