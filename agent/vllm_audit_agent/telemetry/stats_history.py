"""The engine-stats time series on the agent's disk, for `vllm-audit stats export`.

Every engine-stats snapshot the agent publishes (one per engine per publish interval, the same
JSON object as the `<prefix>.engine-stats` Kafka message) is also appended as one line to
`<data_dir>/engine-stats/current.jsonl`. When that file passes half of the byte budget it
becomes `previous.jsonl` (replacing the older one), so the history holds at most
`max_bytes` and always the newest snapshots — a day or more at the default budget for a few
engines, without Kafka.

Engine stats are telemetry, not audit records: lines are written without fsync and a failed
write (disk full, I/O error) is counted (`write_errors`), never raised into ingest. A torn
last line after a crash is skipped by the reader and counted there.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson

from vllm_audit_agent.storage.datadir import open_private, private_dir

HISTORY_DIR = "engine-stats"
CURRENT, PREVIOUS = "current.jsonl", "previous.jsonl"
#: Default byte budget of the history (both files together).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: Columns first in a CSV row; every other field follows, sorted.
CSV_LEAD = ("timestamp_ms", "source_id", "model", "engine_index")
COUNTERS = ("snapshots_written", "write_errors", "rotations")


class StatsHistory:
    """Appends snapshots to the history files; `max_bytes` 0 turns the history off."""

    def __init__(self, data_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = data_dir / HISTORY_DIR
        self.max_bytes = max_bytes
        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self._fd: int | None = None
        self._size = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def append(self, snapshot: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = orjson.dumps(snapshot) + b"\n"
        try:
            if self._fd is None:
                self._open()
            elif self._size + len(line) > self.max_bytes // 2:
                self._rotate()
            assert self._fd is not None
            os.write(self._fd, line)
            self._size += len(line)
            self.counters["snapshots_written"] += 1
        except OSError:
            self.counters["write_errors"] += 1
            self.close()  # reopened (and its size re-read) on the next snapshot

    def _open(self) -> None:
        private_dir(self.directory)
        self._fd = open_private(self.directory / CURRENT, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        self.close()
        os.replace(self.directory / CURRENT, self.directory / PREVIOUS)
        self.counters["rotations"] += 1
        self._open()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


# --- reading ----------------------------------------------------------------------------------

def read_history(data_dir: Path, skipped: Counter[str] | None = None) -> Iterator[dict[str, Any]]:
    """The stored snapshots, oldest first. Lines that do not parse (a torn tail after a crash)
    are skipped and counted in `skipped["unreadable_lines"]`."""
    directory = data_dir / HISTORY_DIR
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} does not exist: the agent has kept no engine-stats "
                                "history there (is --stats-history-bytes 0, or is this the "
                                "wrong --data-dir?)")
    for name in (PREVIOUS, CURRENT):
        path = directory / name
        if not path.exists():
            continue
        with path.open("rb") as f:
            for line in f:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    if skipped is not None:
                        skipped["unreadable_lines"] += 1
                    continue
                if isinstance(record, dict):
                    yield record


def in_range(records: Iterable[dict[str, Any]], since_ms: int | None, until_ms: int | None
             ) -> Iterator[dict[str, Any]]:
    for record in records:
        t = int(record.get("timestamp_ms", 0))
        if (since_ms is None or t >= since_ms) and (until_ms is None or t < until_ms):
            yield record


def write_jsonl(records: Iterable[dict[str, Any]], out: TextIO) -> int:
    count = 0
    for record in records:
        out.write(orjson.dumps(record).decode() + "\n")
        count += 1
    return count


def write_csv(records: Iterable[dict[str, Any]], out: TextIO) -> int:
    """One row per snapshot: the lead columns, then every other field seen (sorted); nested
    values (e.g. histograms) as JSON."""
    rows = list(records)
    others = sorted({key for row in rows for key in row} - set(CSV_LEAD))
    writer = csv.writer(out)
    writer.writerow([*CSV_LEAD, *others])
    for row in rows:
        writer.writerow([_cell(row.get(key)) for key in (*CSV_LEAD, *others)])
    return len(rows)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)
