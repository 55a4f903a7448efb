"""The store's columnar insert (rows.columns: one parse per record, one list per column) makes
the same rows as the row-by-row insert it replaced — kept here as the reference, with the
forgiving `_int` clamp on every number — for ordinary records and for every edge value that
clamp handled; and the two land in chDB as the same rows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from vllm_audit_agent.fleet.backend import open_backend
from vllm_audit_agent.fleet.rows import SCHEMA, columns
from vllm_audit_agent.fleet.schema import RECORD_COLUMNS
from vllm_audit_agent.fleet.store import FleetStore

NOW = 1_790_000_000_000


# -- the row-by-row insert as it was (the reference) ----------------------------------------
def _int(value: Any, high: int) -> int:
    try:
        return max(0, min(int(value or 0), high))
    except (TypeError, ValueError, OverflowError):
        return 0


def _row(record: dict[str, Any], payload: bytes, now_ms: int) -> tuple[Any, ...]:
    kind = str(record.get("type") or "request")
    ts = record.get("timestamp_ms") or record.get("time_unix_ms") or record.get(
        "recorded_unix_ms") or 0
    recorded = _int(record.get("recorded_unix_ms"), 2**53) or now_ms
    status = _int(record.get("status_code"), 65535)
    error = bool(record.get("error")) or status >= 400
    return (
        str(record.get("log_id") or ""), _int(record.get("seq"), 2**63), kind, _int(ts, 2**53),
        recorded, str(record.get("trail_id") or ""), _int(record.get("revision"), 2**32 - 1),
        str(record.get("tenant") or ""), str(record.get("user") or ""),
        str(record.get("model") or record.get("gen_ai.request.model") or ""),
        str(record.get("state") or ""), str(record.get("client_request_id") or ""),
        str(record.get("request_id") or ""), status, int(error),
        _int(record.get("gen_ai.usage.input_tokens") or record.get("prompt_tokens"), 2**32 - 1),
        _int(record.get("gen_ai.usage.output_tokens") or record.get("completion_tokens"),
             2**32 - 1),
        int(bool(record.get("prompt") or record.get("output"))), payload,
    )


def reference(payloads: list[bytes], now_ms: int) -> pa.Table:
    rows, seen = [], set()
    for payload in payloads:
        try:
            record = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
            continue
        row = _row(record, payload, now_ms)
        if (row[0], row[1]) in seen:
            continue
        seen.add((row[0], row[1]))
        rows.append(row)
    cols = list(zip(*rows, strict=True)) or [()] * len(RECORD_COLUMNS)
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, SCHEMA,
                                                                           strict=True)],
                                schema=SCHEMA)


# -- records ------------------------------------------------------------------------------
def rec(seq: Any, **fields: Any) -> bytes:
    return orjson.dumps({"type": "request", "log_id": "a" * 32, "seq": seq, **fields},
                        option=orjson.OPT_SORT_KEYS)


EDGES = [
    rec(1, trail_id="t1", revision=0, timestamp_ms=NOW, recorded_unix_ms=NOW + 5,
        tenant="acme", user="alice", model="m1", state="TRAIL_STATE_FINISHED",
        client_request_id="c1", request_id="r1", status_code=200,
        **{"gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 4}),
    rec(2, revision="3", status_code="404", prompt_tokens="12", completion_tokens=7.9,
        timestamp_ms=None, time_unix_ms=NOW - 1, user="ünïcode ✓", prompt="hi"),
    rec(3, revision="x", status_code=99_999, prompt_tokens=-5, completion_tokens=1e20,
        recorded_unix_ms=-1, output="out", error="boom"),
    rec(4, revision=2**40, status_code=-1, timestamp_ms=2**60, recorded_unix_ms=2**60,
        **{"gen_ai.usage.input_tokens": 0}, prompt_tokens=3, model=None,
        **{"gen_ai.request.model": "m2"}),
    rec(5, revision=1.7, status_code=True, tenant=0, user=None, type="", state=12,
        client_request_id=["x"], request_id={"a": 1}, trail_id=7),
    rec(2**64 - 1, revision=False, type="checkpoint"),
    b'{"log_id":"c","seq":18446744073709551621}',  # beyond 64 bits: a float, skipped
    rec(-3, log_id=123),
    rec(True, log_id="b" * 32),
    rec(6, log_id=None, timestamp_ms=[1], recorded_unix_ms="17", status_code="2e3"),
    rec(7, revision=float(2**70), timestamp_ms="NaN", prompt_tokens=2**33),
    rec(1, trail_id="a copy of seq 1 in the same batch: the first is kept"),
    rec("5"),  # a seq that is not an int: skipped, as an unreadable record
    orjson.dumps({"log_id": "a" * 32}),  # no seq
    orjson.dumps([1, 2, 3]),
    b"{not json",
    b"",
]


def test_columns_equal_the_row_insert_for_every_edge_value() -> None:
    made, expected = columns(EDGES, NOW), reference(EDGES, NOW)
    assert made.num_rows == expected.num_rows == 10
    for name in RECORD_COLUMNS:
        assert made.column(name).equals(expected.column(name)), name
    row = made.slice(2, 1).to_pylist()[0]  # seq 3: the clamps at work
    assert (row["revision"], row["status_code"], row["is_error"], row["input_tokens"],
            row["output_tokens"], row["has_content"]) == (0, 65535, 1, 0, 2**32 - 1, 1)
    # no time of its own: the batch's
    assert made.column("recorded").cast(pa.int64())[2].as_py() == NOW


def test_a_real_batch_equals_the_row_insert() -> None:
    payloads = [rec(i, trail_id=f"t{i}", revision=i % 3, timestamp_ms=NOW + i,
                    recorded_unix_ms=NOW + i, tenant=f"t{i % 4}", user=f"u{i % 7}",
                    status_code=200 + (i % 5) * 100, prompt_tokens=i, completion_tokens=2 * i)
                for i in range(1, 2001)]
    assert columns(payloads, NOW).equals(reference(payloads, NOW))
    assert columns([], NOW).equals(reference([], NOW))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FleetStore]:
    opened = FleetStore(open_backend(str(tmp_path / "chdb")), "columnar")
    try:
        yield opened
    finally:
        opened.close()


def test_both_inserts_store_the_same_rows(store: FleetStore) -> None:
    rows_db = FleetStore(store.backend, "by_rows")  # the same chDB, another database
    for db in ("columnar", "by_rows"):  # rows dated 1970 or 287,000 AD: their TTL is past
        store.backend.command(f"SYSTEM STOP MERGES {db}.records")
    start = time.time_ns() // 1_000_000
    assert store.insert(EDGES) == 10
    rows_db.backend.insert("by_rows.records", reference(EDGES, start))
    # a record without a time of its own is stored at its batch's: `start` or a moment later
    select = ("SELECT * EXCEPT (ts, recorded), toUnixTimestamp64Milli(ts) AS t, "
              "if(toUnixTimestamp64Milli(recorded) BETWEEN {start:Int64} AND {start:Int64} "
              "+ 600000, -1, toUnixTimestamp64Milli(recorded)) AS r FROM {db}.records "
              "ORDER BY log_id, seq")
    columnar = store.backend.rows(select.replace("{db}", "columnar"), {"start": start})
    by_rows = store.backend.rows(select.replace("{db}", "by_rows"), {"start": start})
    assert columnar == by_rows
    assert [r["seq"] for r in columnar if r["log_id"] == "a" * 32] == [1, 2, 3, 4, 5, 7,
                                                                        2**63]
    assert sum(r["r"] == -1 for r in columnar) == 7
