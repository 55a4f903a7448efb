"""`vllm-audit export`: a time range of the record log as JSONL, CSV, or a SIEM's format.

The range is on `recorded_unix_ms` (when the record entered the log: the log's own order, so
a range is one contiguous run of the chain): from the first record recorded at or after
`since` to the last recorded before `until`. JSONL lines are the stored canonical records,
byte for byte, and the export runs on to the first checkpoint after the range, so
`vllm-audit verify` can check the file on its own (the first line anchors the chain). CSV has
one row per request record: the chain fields first, then every other top-level field seen in
the range (sorted); nested values are JSON. CSV is for reading, not for verification.
`ocsf`, `ecs` and `hec` write one JSON line per record of the range that the format has a
shape for (siem/formats.py): OCSF events and ECS documents of the requests and findings, a
Splunk HEC event of every record; no checkpoint tail, as they are copies for a SIEM, not
evidence (`jsonl` is).

From a record log directory, a range with `since` starts where the sealed segments' footers
and index say its first record lies (range_read.py: the segments and frames before are not
read), and every format stops reading at the checkpoint after `until`: the cost of a range is
that of the range, not of the log's history.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import orjson

from vllm_audit_agent.records.chain import RECORD_TYPE_CHECKPOINT, RECORD_TYPE_REQUEST
from vllm_audit_agent.records.fields import time_and_type
from vllm_audit_agent.records.range_read import RangeStats, read_since
from vllm_audit_agent.siem.formats import SIEM_FORMATS, encode

FORMATS = ("jsonl", "csv", *SIEM_FORMATS)
CSV_LEAD = ("seq", "type", "event_id", "recorded_unix_ms", "prev_hash", "hash")


def parse_time(text: str) -> int:
    """Unix ms from an ISO 8601 time (naive = UTC) or a number (seconds, or ms if > 1e11)."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return int(number if number > 1e11 else number * 1000)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time or a unix timestamp") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def select(payloads: Iterator[bytes], since_ms: int | None, until_ms: int | None
           ) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """The records in range, then those up to and including the next checkpoint."""
    started = False
    for payload in payloads:
        record = orjson.loads(payload)
        t = int(record.get("recorded_unix_ms", 0))
        if not started:
            if since_ms is not None and t < since_ms:
                continue
            started = True
        if until_ms is not None and t >= until_ms:
            # Past the range: run on to the checkpoint that covers what was exported.
            yield payload, record
            if record.get("type") == RECORD_TYPE_CHECKPOINT:
                return
            continue
        yield payload, record


def export(records: Path | Callable[[], Iterator[bytes]], out: TextIO,
           since_ms: int | None = None, until_ms: int | None = None, fmt: str = "jsonl",
           stats: RangeStats | None = None) -> int:
    """Writes the range to `out`; returns how many request records it holds. `records`: a
    record log directory (read from `since` on by its footers; `stats`: what that read), or
    what reads the records oldest first (the WORM archive's reader), called once per pass."""
    if isinstance(records, Path):
        directory = records

        def read() -> Iterator[bytes]:
            return read_since(directory, since_ms, stats)
    else:
        read = records
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise ValueError("--until must be after --since")
    count = 0
    if fmt in SIEM_FORMATS:
        return _export_siem(read(), out, since_ms, until_ms, fmt)
    if fmt == "jsonl":
        return _export_jsonl(read(), out, since_ms, until_ms)
    columns: set[str] = set()
    for _, record in select(read(), since_ms, until_ms):
        if record.get("type") == RECORD_TYPE_REQUEST:
            columns.update(record)
    header = list(CSV_LEAD) + sorted(columns - set(CSV_LEAD))
    writer = csv.writer(out)
    writer.writerow(header)
    for _, record in select(read(), since_ms, until_ms):
        if record.get("type") != RECORD_TYPE_REQUEST:
            continue
        if until_ms is not None and int(record.get("recorded_unix_ms", 0)) >= until_ms:
            continue
        writer.writerow([_cell(record.get(c)) for c in header])
        count += 1
    return count


def _time_and_type(payload: bytes) -> tuple[int, str | None]:
    """`recorded_unix_ms` and `type`, from the bytes when their keys occur once (fields.py),
    else parsed."""
    found = time_and_type(payload)
    if found is not None:
        return found
    record = orjson.loads(payload)
    return int(record.get("recorded_unix_ms", 0)), record.get("type")


def _export_jsonl(payloads: Iterator[bytes], out: TextIO, since_ms: int | None,
                  until_ms: int | None) -> int:
    """The stored bytes of the range, unparsed (see `select`), in writes of ~1 MiB: to the
    binary stream under `out` when it has one (a file, stdout), else as text."""
    binary: BinaryIO | None = getattr(out, "buffer", None)
    if binary is not None:
        out.flush()
    batch: list[bytes] = []
    size = count = 0
    tail: list[bytes] = []  # records past `until`, written only if a checkpoint ends them
    started = False
    for payload in payloads:
        when, kind = _time_and_type(payload)
        if not started:
            if since_ms is not None and when < since_ms:
                continue
            started = True
        if until_ms is not None and when >= until_ms:
            # Past the range: run on to the checkpoint that covers what was exported.
            tail.append(payload)
            if kind != RECORD_TYPE_CHECKPOINT:
                continue
            batch.extend(tail)
            break
        batch.append(payload)
        size += len(payload)
        count += kind == RECORD_TYPE_REQUEST
        if size >= 1 << 20:
            _write_lines(batch, out, binary)
            batch, size = [], 0
    _write_lines(batch, out, binary)
    return count


def _write_lines(payloads: list[bytes], out: TextIO, binary: BinaryIO | None) -> None:
    if not payloads:
        return
    data = b"\n".join(payloads) + b"\n"
    if binary is not None:
        binary.write(data)
    else:
        out.write(data.decode())


def _export_siem(payloads: Iterator[bytes], out: TextIO, since_ms: int | None,
                 until_ms: int | None, fmt: str) -> int:
    count = 0
    for _, record in select(payloads, since_ms, until_ms):
        if until_ms is not None and int(record.get("recorded_unix_ms", 0)) >= until_ms:
            break
        line = encode(fmt, record)
        if line is not None:
            out.write(line.decode() + "\n")
            count += record.get("type") == RECORD_TYPE_REQUEST
    return count


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return str(value)
