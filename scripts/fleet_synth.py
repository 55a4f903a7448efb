"""Ten million fleet store rows without ten million Python records: the benchmark's request
record (bench_fleet.records: a real `trail_record`, canonical bytes, ~3 KB) rebuilt in SQL per
row over `numbers(N)` and inserted into the real `records` table with its columns.

Honest about the row shape: the `record` bytes are the same JSON text the agent writes (sorted
keys, orjson's separators) with the varying fields varying as bench_fleet.records varies them
(40 logs with dense seqs, 1,000 users, 10 tenants, 5 models, 90 days, random token counts and
latencies); `hash` is a SHA-256 per (log, seq) and `prev_hash` the previous seq's, so the chain
fields compress as a real chain does. Not a verifiable chain (nothing signs it): the query and
size figures need the shape, not the proofs. `check` rebuilds sample rows' columns from their
`record` with the store's own `columns()` and compares: the SQL columns are the store's.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pyarrow as pa

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.fleet.rows import columns
from vllm_audit_agent.fleet.schema import RECORD_COLUMNS
from vllm_audit_agent.fleet.store import FleetStore
from vllm_audit_agent.model.record import trail_record

DAY_MS = 86_400_000
USERS, LOGS, TENANTS, MODELS, DAYS = 1_000, 40, 10, 5, 90
#: record field -> its SQL value over the row's columns below; text fields are quoted
_TEXT = {"log_id": "log_id", "prev_hash": "prev_hash", "hash": "hash", "trail_id": "rid",
         "request_id": "rid", "event_id": "concat(rid, '/0')", "user": "user",
         "tenant": "tenant", "model": "model", "gen_ai.request.model": "model"}
_NUMBER = {"seq": "seq", "recorded_unix_ms": "t + 900", "timestamp_ms": "t",
           "created_unix_ms": "t", "finished_unix_ms": "t + 812", "prompt_tokens": "pt",
           "completion_tokens": "ct", "gen_ai.usage.input_tokens": "pt",
           "gen_ai.usage.output_tokens": "ct",
           "latency_ms": "cityHash64(n, 6) / 18446744073709551615 * 2000",
           "ttft_ms": "cityHash64(n, 7) / 18446744073709551615 * 100"}


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def record_sql() -> str:
    """The canonical record as one SQL `concat`: the template's text, each varying field's
    placeholder replaced by its SQL value."""
    template = trail_record(q.TrailSummary(
        request_id="x", model="m", user="u", tenant="t", client_ip="10.0.0.1",
        state=q.TRAIL_STATE_FINISHED, prompt_tokens=1, completion_tokens=1, latency_ms=1.0,
        ttft_ms=1.0, finish_reason="stop", status_code=200, created_unix_ms=1))
    fields: dict[str, Any] = dict(template, type="request")
    fields.update({name: f"@@{name}@@" for name in [*_TEXT, *_NUMBER]})
    text = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS).decode()
    parts, pos = [], 0
    for found in re.finditer(r'"@@([^@]+)@@"', text):
        name = found.group(1)
        parts.append(_literal(text[pos:found.start()]))
        parts.append(f"'\"', {_TEXT[name]}, '\"'" if name in _TEXT
                     else f"toString({_NUMBER[name]})")
        pos = found.end()
    parts.append(_literal(text[pos:]))
    return "concat(" + ", ".join(parts) + ")"


def insert_sql(db: str, start_ms: int, total: int, offset: int, count: int) -> str:
    """Rows offset … offset+count of `total` spread over DAYS from `start_ms`."""
    return f"""INSERT INTO {db}.records (log_id, seq, type, ts, recorded, trail_id, revision,
    tenant, user, model, state, client_request_id, request_id, status_code, is_error,
    input_tokens, output_tokens, has_content, record)
SELECT log_id, seq, 'request', fromUnixTimestamp64Milli(toInt64(t)),
       fromUnixTimestamp64Milli(toInt64(t + 900)), rid, 0, tenant, user, model,
       'TRAIL_STATE_FINISHED', '', rid, 200, 0, pt, ct, 0, {record_sql()}
FROM (SELECT number AS n, leftPad(lower(hex(toUInt8(n % {LOGS}))), 32, '0') AS log_id,
             intDiv(n, {LOGS}) + 1 AS seq, {start_ms} + intDiv({DAYS * DAY_MS} * n, {total}) AS t,
             concat('chatcmpl-', leftPad(lower(hex(n)), 16, '0')) AS rid,
             concat('user-', leftPad(toString(cityHash64(n, 1) % {USERS}), 4, '0')) AS user,
             concat('tenant-', toString(cityHash64(n, 2) % {TENANTS})) AS tenant,
             concat('model-', toString(cityHash64(n, 3) % {MODELS})) AS model,
             cityHash64(n, 4) % 2000 AS pt, cityHash64(n, 5) % 800 AS ct,
             lower(hex(SHA256(concat(log_id, '/', toString(seq))))) AS hash,
             if(seq = 1, repeat('0', 64),
                lower(hex(SHA256(concat(log_id, '/', toString(seq - 1)))))) AS prev_hash
      FROM numbers({offset}, {count}))"""


def fill(store: FleetStore, total: int, now_ms: int, chunk: int = 1_000_000) -> None:
    for offset in range(0, total, chunk):
        store.backend.command(insert_sql(store.db, now_ms - DAYS * DAY_MS, total, offset,
                                         min(chunk, total - offset)))


def check(store: FleetStore, sample: int = 1000) -> int:
    """Rows whose stored columns equal what the store's insert makes of their `record`."""
    times = ("ts", "recorded")
    names = ", ".join(f"toUnixTimestamp64Milli({c}) AS {c}" if c in times else c
                      for c in RECORD_COLUMNS)
    rows = store.backend.rows(f"SELECT {names} FROM {store.db}.records "
                              f"ORDER BY cityHash64(log_id, seq) LIMIT {sample}")
    made = columns([r["record"] if isinstance(r["record"], bytes) else r["record"].encode()
                    for r in rows], 0)
    for name in times:
        made = made.set_column(made.schema.get_field_index(name), name,
                               made.column(name).cast(pa.int64()))
    return sum(all(_same(stored[c], rebuilt[c]) for c in RECORD_COLUMNS)
               for stored, rebuilt in zip(rows, made.to_pylist(), strict=True))


def _same(a: Any, b: Any) -> bool:
    text = (bytes, str)
    if isinstance(a, text) and isinstance(b, text):
        return (a if isinstance(a, bytes) else a.encode()) == (
            b if isinstance(b, bytes) else b.encode())
    return bool(a == b)
