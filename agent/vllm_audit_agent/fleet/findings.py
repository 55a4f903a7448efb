"""Fleet-wide detections: the agents' rule engine (detections/) over every pod's request and
access records as the consumer stores them (scope "fleet": one user's calls spread over ten
pods are one user's calls here), and the `findings` table their findings go to.

The pods' own findings (scope "pod") are records of their logs: they arrive on
`<prefix>.findings` and are stored in `records` with type `finding`, like any record. The
fleet's findings are not in any chain (the fleet keeps no log): they have their own table,
ReplacingMergeTree on finding_id, kept for the evidence retention. The consumer is
at-least-once: the engine remembers the trail ids it read (`dedupe`) so a re-delivered
batch counts nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa

from vllm_audit_agent.detections.engine import RuleEngine
from vllm_audit_agent.fleet.backend import Backend
from vllm_audit_agent.fleet.schema import DEFAULT_RETENTION, Retention

#: Bytes a record the rules read carries (the canonical form sorts keys, has no spaces).
_FED = (b'"type":"request"', b'"type":"access"')
FINDING_COLUMNS = ("finding_id", "recorded", "rule", "severity", "subject_kind", "subject",
                   "tenant", "window_start", "window_end", "observed", "threshold", "scope",
                   "record")
_SCHEMA = pa.schema([
    ("finding_id", pa.string()), ("recorded", pa.timestamp("ms")), ("rule", pa.string()),
    ("severity", pa.string()), ("subject_kind", pa.string()), ("subject", pa.string()),
    ("tenant", pa.string()), ("window_start", pa.timestamp("ms")),
    ("window_end", pa.timestamp("ms")), ("observed", pa.float64()),
    ("threshold", pa.float64()), ("scope", pa.string()), ("record", pa.string())])


def create_statement(database: str, retention: Retention = DEFAULT_RETENTION) -> str:
    ttl = (f"\nTTL toDateTime(recorded) + INTERVAL {retention.evidence_days} DAY DELETE"
           if retention.evidence_days else "")
    return f"""CREATE TABLE IF NOT EXISTS {database}.findings (
    finding_id String,
    recorded DateTime64(3) CODEC(Delta, ZSTD(1)),
    rule LowCardinality(String),
    severity LowCardinality(String),
    subject_kind LowCardinality(String),
    subject String CODEC(ZSTD(1)),
    tenant LowCardinality(String),
    window_start DateTime64(3),
    window_end DateTime64(3),
    observed Float64,
    threshold Float64,
    scope LowCardinality(String),
    record String CODEC(ZSTD(3))
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(recorded)
ORDER BY (rule, subject_kind, subject, finding_id){ttl}"""


class FindingsTable:
    def __init__(self, backend: Backend, database: str,
                 retention: Retention = DEFAULT_RETENTION) -> None:
        self.backend, self.db = backend, database
        backend.command(create_statement(database, retention))

    def insert(self, findings: Sequence[dict[str, Any]]) -> int:
        if not findings:
            return 0
        rows = [(f["finding_id"], int(f.get("recorded_unix_ms") or 0), f["rule"], f["severity"],
                 f["subject"]["kind"], f["subject"]["value"], f.get("tenant") or "",
                 int(f["window_start_ms"]), int(f["window_end_ms"]), float(f["observed"]),
                 float(f["threshold"]), f["scope"], orjson.dumps(f, option=orjson.OPT_SORT_KEYS
                                                                 ).decode())
                for f in findings]
        columns = list(zip(*rows, strict=True))
        self.backend.insert(f"{self.db}.findings", pa.Table.from_arrays(
            [pa.array(col, type=fld.type) for col, fld in zip(columns, _SCHEMA, strict=True)],
            schema=_SCHEMA))
        return len(rows)

    def query(self, rule: str | None = None, subject: str | None = None, limit: int = 100
              ) -> list[dict[str, Any]]:
        """The newest findings (by window end), optionally of one rule and/or one subject."""
        conditions, params = ["1"], dict[str, Any](limit=limit)
        if rule is not None:
            conditions.append("rule = {rule:String}")
            params["rule"] = rule
        if subject is not None:
            conditions.append("subject = {subject:String}")
            params["subject"] = subject
        rows = self.backend.rows(
            f"SELECT record FROM {self.db}.findings WHERE {' AND '.join(conditions)} "
            "ORDER BY window_end DESC, finding_id LIMIT 1 BY finding_id LIMIT {limit:UInt32}",
            params)
        return [orjson.loads(r["record"]) for r in rows]


class FleetDetections:
    """The engine over stored payloads; the findings go to the table."""

    def __init__(self, engine: RuleEngine, table: FindingsTable) -> None:
        self.engine, self.table = engine, table

    def feed(self, payloads: Sequence[bytes]) -> int:
        """Evaluates the request and access records among `payloads`; returns the findings
        stored."""
        findings = []
        for payload in payloads:
            if not any(marker in payload for marker in _FED):
                continue
            try:
                record = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                findings += self.engine.feed(record)
        now_ms = time.time_ns() // 1_000_000
        for finding in findings:
            finding["type"] = "finding"
            finding["recorded_unix_ms"] = now_ms
        return self.table.insert(findings)


#: ListFindings' filters -> (the findings table's column, the records' JSON path): the pods'
#: findings are records (type finding) whose fields only the record's JSON holds.
_FILTERS = {"rule": ("rule", "'rule'"), "subject": ("subject", "'subject', 'value'"),
            "subject_kind": ("subject_kind", "'subject', 'kind'"),
            "severity": ("severity", "'severity'"), "tenant": ("tenant", "'tenant'")}


def stored_findings(backend: Backend, database: str, filters: dict[str, str], since_ms: int,
                    until_ms: int, limit: int) -> list[bytes]:
    """The newest `limit` findings by window end, the pods' (records of type finding) and the
    fleet's own (its findings table, when --detections made it), matching every non-empty
    filter of _FILTERS and the window end's range (0: open)."""
    params: dict[str, Any] = {"limit": limit, "since": since_ms, "until": until_ms}
    own, pods = [], ["type = 'finding'"]
    for name, value in filters.items():
        if value:
            column, path = _FILTERS[name]
            params[name] = value
            own.append(f"{column} = {{{name}:String}}")
            pods.append(f"JSONExtractString(record, {path}) = {{{name}:String}}")
    end = "JSONExtractInt(record, 'window_end_ms')"
    for cond, col in (("since", ">="), ("until", "<")):
        if params[cond]:
            own.append(f"toUnixTimestamp64Milli(window_end) {col} {{{cond}:Int64}}")
            pods.append(f"{end} {col} {{{cond}:Int64}}")
    rows = backend.rows(
        f"SELECT record, {end} AS ended FROM {database}.records WHERE {' AND '.join(pods)} "
        "ORDER BY ended DESC, log_id, seq LIMIT 1 BY log_id, seq LIMIT {limit:UInt32}", params)
    if backend.rows(f"EXISTS TABLE {database}.findings")[0]["result"]:
        rows += backend.rows(
            f"SELECT record, toUnixTimestamp64Milli(window_end) AS ended FROM {database}.findings "
            f"WHERE {' AND '.join(own) or '1'} ORDER BY ended DESC, finding_id "
            "LIMIT 1 BY finding_id LIMIT {limit:UInt32}", params)
    rows.sort(key=lambda r: int(r["ended"]), reverse=True)
    return [_bytes(r["record"]) for r in rows[:limit]]


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
