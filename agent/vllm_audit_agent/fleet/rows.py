"""A batch of records as the fleet store's columns: what an audit query filters and sums on,
taken from each record's canonical bytes (any record type; fields a type lacks are empty).

This is the consumer's hot path (one call per record), so it is written for speed: each
payload is parsed once — in the consumer by the verifier, which needs it anyway to route the
record and hands the parsed record to `Rows.add` (one orjson parse of a ~3 KB record costs
about what the column building does; parsing twice was a fifth of the consumer's time) —, its
values go straight into one list per column (no row tuples, no transpose), and the bounds a
column's type needs are checked inline — only a value that is not already an in-range int
takes the slow, forgiving conversion (`_int`). `columns` is the same for a batch of bytes
(`FleetStore.insert`). The Arrow table is what both backends insert column by column (chDB's
`Python()` table function, clickhouse-connect's `insert_arrow`).

A column's value, for a record `r` (`now_ms`: the batch's time):
  log_id, trail_id, tenant, user, state, client_request_id, request_id: the field as text ("" if
  absent or falsy); model: `model`, else `gen_ai.request.model`; type: `type`, else "request";
  seq, revision, status_code, tokens: the field as an int clamped to the column's range (0 when
  absent or not a number); ts: `timestamp_ms`, else `time_unix_ms`, else `recorded_unix_ms`;
  recorded: `recorded_unix_ms`, else `now_ms`; input/output tokens: `gen_ai.usage.*_tokens`,
  else `prompt_tokens`/`completion_tokens`; is_error: `error` is set or status >= 400;
  has_content: the record holds `prompt` or `output` in clear (sealed `content` does not count:
  its ciphertext is unreadable once the agent destroys the key, so the record stays whole and
  provable instead of going with the content TTL); record: the payload's bytes as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa

from vllm_audit_agent.fleet.schema import RECORD_COLUMNS

_ARROW_TYPES = {"seq": pa.uint64(), "ts": pa.timestamp("ms"),
                "recorded": pa.timestamp("ms"), "revision": pa.uint32(),
                "status_code": pa.uint16(), "is_error": pa.uint8(), "input_tokens": pa.uint32(),
                "output_tokens": pa.uint32(), "has_content": pa.uint8(),
                # the canonical bytes as they came: no decode, no copy into Python text
                "record": pa.binary()}
SCHEMA = pa.schema([(name, _ARROW_TYPES.get(name, pa.string())) for name in RECORD_COLUMNS])
TIME_MAX = 2**53  # ms; beyond it a float JSON reader loses precision
SEQ_MAX, U32_MAX, U16_MAX = 2**63, 2**32 - 1, 65535


def _int(value: Any, high: int) -> int:
    """`value` as an int in [0, high]: numbers clamped, numeric text read, anything else 0."""
    try:
        return max(0, min(int(value or 0), high))
    except (TypeError, ValueError, OverflowError):
        return 0


def _text(value: Any) -> str:
    return value if value.__class__ is str else str(value or "")


class Rows:
    """The store's rows, one list per column, filled record by record from records parsed
    already: the consumer parses each record once, for the verifier (which log, which seq) and
    for these columns (`FleetVerifier.feed` hands each record it keeps to `add`). The first of
    a batch's copies of a (log_id, seq) is kept."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.values: dict[str, list[Any]] = {name: [] for name in RECORD_COLUMNS}
        self._seen: set[tuple[str, int]] = set()
        # The lists' appends, bound once: `add` runs once per record on the hot path.
        self._appends = tuple(self.values[name].append for name in RECORD_COLUMNS)

    def add(self, r: Any, payload: bytes) -> None:
        """Adds record `r` (`payload` parsed); a record that is not a JSON object with an
        integer `seq` is skipped."""
        if r.__class__ is not dict:
            return
        get = r.get
        seq = get("seq")
        if not isinstance(seq, int):
            return
        log_id = get("log_id")
        log_id = log_id if log_id.__class__ is str else str(log_id or "")
        seq = seq if seq.__class__ is int and 0 <= seq <= SEQ_MAX else _int(seq, SEQ_MAX)
        if (log_id, seq) in self._seen:
            return
        self._seen.add((log_id, seq))
        (log_ids, seqs, kinds, times, recorded, trails, revisions, tenants, users, models,
         states, clients, requests, statuses, errors, inputs, outputs, contents,
         records) = self._appends
        log_ids(log_id)
        seqs(seq)
        kind = get("type")
        kinds(kind if kind.__class__ is str and kind else str(kind or "request"))
        ts = get("timestamp_ms") or get("time_unix_ms") or get("recorded_unix_ms") or 0
        times(ts if ts.__class__ is int and 0 <= ts <= TIME_MAX else _int(ts, TIME_MAX))
        at = get("recorded_unix_ms")
        recorded((at if at.__class__ is int and 0 <= at <= TIME_MAX
                  else _int(at, TIME_MAX)) or self.now_ms)
        # Text fields: the str already (nearly always) without a call, else `_text`.
        t = get("trail_id")
        trails(t if t.__class__ is str else _text(t))
        n = get("revision")
        revisions(n if n.__class__ is int and 0 <= n <= U32_MAX else _int(n, U32_MAX))
        t = get("tenant")
        tenants(t if t.__class__ is str else _text(t))
        t = get("user")
        users(t if t.__class__ is str else _text(t))
        t = get("model") or get("gen_ai.request.model")
        models(t if t.__class__ is str else _text(t))
        t = get("state")
        states(t if t.__class__ is str else _text(t))
        t = get("client_request_id")
        clients(t if t.__class__ is str else _text(t))
        t = get("request_id")
        requests(t if t.__class__ is str else _text(t))
        n = get("status_code")
        status = n if n.__class__ is int and 0 <= n <= U16_MAX else _int(n, U16_MAX)
        statuses(status)
        errors(1 if get("error") or status >= 400 else 0)
        n = get("gen_ai.usage.input_tokens") or get("prompt_tokens")
        inputs(n if n.__class__ is int and 0 <= n <= U32_MAX else _int(n, U32_MAX))
        n = get("gen_ai.usage.output_tokens") or get("completion_tokens")
        outputs(n if n.__class__ is int and 0 <= n <= U32_MAX else _int(n, U32_MAX))
        contents(1 if get("prompt") or get("output") else 0)
        records(payload)

    @property
    def num_rows(self) -> int:
        return len(self.values["record"])

    def table(self) -> pa.Table:
        return pa.Table.from_arrays(
            [pa.array(self.values[f.name], type=f.type) for f in SCHEMA], schema=SCHEMA)


def columns(payloads: Sequence[bytes], now_ms: int) -> pa.Table:
    """The store's rows for `payloads`, one per (log_id, seq) (the first of a batch's copies);
    payloads that are not a JSON object with an integer `seq` are skipped."""
    rows = Rows(now_ms)
    add, loads = rows.add, orjson.loads
    for payload in payloads:
        try:
            record = loads(payload)
        except orjson.JSONDecodeError:
            continue
        add(record, payload)
    return rows.table()
