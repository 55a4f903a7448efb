"""The fleet store: every pod's records in ClickHouse (chDB in-process, or a server), and the
trail queries an audit asks of them (schema.py has the tables and why they are so).

Reads never show a duplicate or an old revision: trails are the newest revision per trail id
(`argMax(…, revision)`), records are one per (log_id, seq) (`LIMIT 1 BY`). Inserting a batch
twice (the consumer is at-least-once) changes no answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from vllm_audit_agent.fleet.backend import Backend, open_backend
from vllm_audit_agent.fleet.migrate import migrate
from vllm_audit_agent.fleet.rows import columns
from vllm_audit_agent.fleet.schema import (
    DEFAULT_RETENTION,
    LOG_COLUMNS,
    Retention,
    create_statements,
)
from vllm_audit_agent.fleet.sigma_view import view_statement

#: A listing page's position: (timestamp_ms, event_id) of the last trail shown.
Cursor = tuple[int, str]
#: Group keys -> the per-trail column of the aggregate's inner query. Those columns are named
#: apart from the record columns: an alias `tenant` there would be what the WHERE on the column
#: `tenant` reads (ClickHouse prefers aliases), an aggregate inside a WHERE (ILLEGAL_AGGREGATION).
GROUP_KEYS = {"tenant": "g_tenant", "user": "g_user", "model": "g_model",
              "day": "toString(g_day)"}
EXPORT_PAGE = 10_000
#: Rows a listing reads first, newest first (at least 4 per trail asked for): see _newest_page.
CANDIDATES = 200


@dataclass(frozen=True)
class TrailQuery:
    """Which trails: every set field must match (tenant None: every tenant)."""
    tenant: str | None = None
    user: str | None = None
    model: str | None = None
    state: str | None = None
    client_request_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None


def _where(query: TrailQuery) -> tuple[str, dict[str, Any]]:
    """The WHERE conditions on a request row (state is the newest revision's: see _having)."""
    conditions, params = ["type = 'request'"], {}
    for name in ("tenant", "user", "model", "client_request_id"):
        value = getattr(query, name)
        if value is not None:
            conditions.append(f"{name} = {{{name}:String}}")
            params[name] = value
    if query.since_ms is not None:
        conditions.append("ts >= fromUnixTimestamp64Milli({since_ms:Int64})")
        params["since_ms"] = query.since_ms
    if query.until_ms is not None:
        conditions.append("ts < fromUnixTimestamp64Milli({until_ms:Int64})")
        params["until_ms"] = query.until_ms
    return " AND ".join(conditions), params


def _having(query: TrailQuery, params: dict[str, Any]) -> list[str]:
    if query.state is None:
        return []
    params["state"] = query.state
    return ["st = {state:String}"]


class FleetStore:
    def __init__(self, backend: Backend, database: str = "vllm_audit",
                 retention: Retention = DEFAULT_RETENTION) -> None:
        self.backend = backend
        self.db = database
        self._saved_ms = 0
        # The Sigma rules' view last: it reads the records table.
        for statement in [*create_statements(database, retention), view_statement(database)]:
            backend.command(statement)
        migrate(backend, database)

    @classmethod
    def open(cls, target: str, database: str = "vllm_audit",
             retention: Retention = DEFAULT_RETENTION) -> FleetStore:
        """`target`: a chDB data directory or a `clickhouse://…` server URL."""
        return cls(open_backend(target), database, retention)

    # -- writing ---------------------------------------------------------------------------
    def insert(self, payloads: Sequence[bytes]) -> int:
        """Stores canonical records of any type; returns how many rows were written (unreadable
        payloads are skipped). Idempotent: a record stored again is the same (log_id, seq)."""
        return self.insert_rows(payloads, columns(payloads, time.time_ns() // 1_000_000))

    def insert_rows(self, payloads: Sequence[bytes], data: pa.Table) -> int:
        """`insert` with the rows made already (`rows.columns(payloads, …)`: the consumer
        builds them while the batch before is inserted)."""
        if data.num_rows:
            self.backend.insert(f"{self.db}.records", data)
        return int(data.num_rows)

    # -- trails ----------------------------------------------------------------------------
    def _newest(self, query: TrailQuery, extra_having: Sequence[str] = (), also: str = ""
                ) -> tuple[str, dict[str, Any]]:
        """The newest revision of each matching trail: its key, time and event id (`also`:
        more conditions on the rows)."""
        where, params = _where(query)
        where += also
        having = _having(query, params) + list(extra_having)
        sql = f"""SELECT trail_id, max(revision) AS rev, argMax(log_id, revision) AS lid,
       argMax(seq, revision) AS s, toUnixTimestamp64Milli(argMax(ts, revision)) AS t,
       argMax(state, revision) AS st, concat(trail_id, '/', toString(rev)) AS eid
FROM {self.db}.records WHERE {where} GROUP BY trail_id"""
        if having:
            sql += " HAVING " + " AND ".join(having)
        return sql, params

    def list_trails(self, query: TrailQuery, limit: int, before: Cursor | None
                    ) -> list[dict[str, Any]]:
        """Request records, the newest revision per trail, newest first (timestamp_ms, then
        event_id, descending), after `before` (the last trail of the previous page)."""
        keys = self._newest_page(query, max(0, int(limit)), before)
        found = self._records_at([(k["lid"], k["s"]) for k in keys])
        return [orjson.loads(found[(k["lid"], k["s"])]) for k in keys
                if (k["lid"], k["s"]) in found]

    def _newest_page(self, query: TrailQuery, limit: int, before: Cursor | None
                     ) -> list[dict[str, Any]]:
        """The page's trail keys. First from the newest rows only: the `CANDIDATES` newest
        matching rows (read in (user, ts) or (tenant, ts) order from a projection) name the
        trails to group; the answer is exact when `limit` of them have their newest revision
        after the oldest row read (every trail not read has all its rows at or before it).
        Otherwise (revisions older than the rows around them, a state filter that drops
        most), every matching row is grouped, as before."""
        where, params = _where(query)
        if before is not None:
            where += " AND ts <= fromUnixTimestamp64Milli({before_t:Int64})"
            params["before_t"] = before[0]
        params["rows"] = max(CANDIDATES, 4 * limit)
        newest = self.backend.rows(
            f"SELECT trail_id, toUnixTimestamp64Milli(ts) AS t FROM {self.db}.records "
            f"WHERE {where} ORDER BY ts DESC LIMIT {{rows:UInt32}}", params)
        extra = []
        if before is not None:
            extra.append("(t, eid) < ({before_t:Int64}, {before_e:String})")
            params["before_e"] = before[1]
        params["limit"] = limit
        page = " ORDER BY t DESC, eid DESC LIMIT {limit:UInt32}"
        if len(newest) == params["rows"]:
            floor = min(int(r["t"]) for r in newest)
            sql, more = self._newest(query, [*extra, "t > {floor:Int64}"],
                                     " AND trail_id IN {trails:Array(String)}")
            keys = self.backend.rows(sql + page, {
                **more, **params, "floor": floor,
                "trails": sorted({r["trail_id"] for r in newest})})
            if len(keys) == limit:
                return keys
        sql, more = self._newest(query, extra)
        return self.backend.rows(sql + page, {**more, **params})

    def _records_at(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
        if not keys:
            return {}
        # The pairs themselves, not log_id IN … AND seq IN …: that product names every seq in
        # every log (dense seqs: a granule per pair), these only their own granules.
        rows = self.backend.rows(
            f"SELECT log_id, seq, record FROM {self.db}.records "
            "WHERE (log_id, seq) IN {keys:Array(Tuple(String, UInt64))} LIMIT 1 BY log_id, seq",
            {"keys": sorted(set(keys))})
        return {(r["log_id"], r["seq"]): _bytes(r["record"]) for r in rows}

    def get_trail(self, trail_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        """The newest revision of one trail (None: none, or not of `tenant`)."""
        conditions, params = ["type = 'request'", "trail_id = {trail_id:String}"], {
            "trail_id": trail_id}
        if tenant is not None:
            conditions.append("tenant = {tenant:String}")
            params["tenant"] = tenant
        rows = self.backend.rows(
            f"SELECT record FROM {self.db}.records WHERE {' AND '.join(conditions)} "
            "ORDER BY revision DESC LIMIT 1", params)
        return orjson.loads(_bytes(rows[0]["record"])) if rows else None

    def export(self, query: TrailQuery) -> Iterator[bytes]:
        """Every matching request record (each revision: each is a record of its log), canonical
        bytes, oldest first; read in pages so a quarter never sits in memory."""
        where, params = _where(query)
        if query.state is not None:
            where += " AND state = {state:String}"
            params["state"] = query.state
        after: tuple[int, str, int] = (-(2**62), "", 0)
        while True:
            page = self.backend.rows(
                f"SELECT toUnixTimestamp64Milli(ts) AS t, log_id, seq, record "
                f"FROM {self.db}.records WHERE {where} AND (toUnixTimestamp64Milli(ts), log_id, "
                "seq) > ({at:Int64}, {al:String}, {aseq:UInt64}) ORDER BY t, log_id, seq "
                "LIMIT 1 BY log_id, seq LIMIT {page:UInt32}",
                {**params, "at": after[0], "al": after[1], "aseq": after[2],
                 "page": EXPORT_PAGE})
            for row in page:
                yield _bytes(row["record"])
            if len(page) < EXPORT_PAGE:
                return
            last = page[-1]
            after = (int(last["t"]), str(last["log_id"]), int(last["seq"]))

    def aggregates(self, query: TrailQuery, group_by: Sequence[str]) -> list[dict[str, Any]]:
        """Requests, input/output tokens and errors per group (any of tenant, user, model, day),
        over the newest revision of each matching trail."""
        unknown = [key for key in group_by if key not in GROUP_KEYS]
        if unknown:
            raise ValueError(f"cannot group by {unknown}: one of {sorted(GROUP_KEYS)}")
        where, params = _where(query)
        having = _having(query, params)
        inner = f"""SELECT trail_id, argMax(tenant, revision) AS g_tenant,
       argMax(user, revision) AS g_user, argMax(model, revision) AS g_model,
       toDate(argMax(ts, revision)) AS g_day, argMax(state, revision) AS st,
       argMax(input_tokens, revision) AS i, argMax(output_tokens, revision) AS o,
       argMax(is_error, revision) AS e
FROM {self.db}.records WHERE {where} GROUP BY trail_id"""
        if having:
            inner += " HAVING " + " AND ".join(having)
        keys = [f"{GROUP_KEYS[k]} AS {k}" for k in group_by]
        select = ", ".join([*keys, "count() AS requests", "sum(i) AS input_tokens",
                            "sum(o) AS output_tokens", "sum(e) AS errors"])
        sql = f"SELECT {select} FROM ({inner})"
        if group_by:
            order = ", ".join(group_by)
            sql += f" GROUP BY {order} ORDER BY {order}"
        rows = self.backend.rows(sql, params)
        return [{k: (int(v) if k in ("requests", "input_tokens", "output_tokens", "errors")
                     else v) for k, v in row.items()} for row in rows]

    # -- records and logs (the verifier's) -------------------------------------------------
    def records_of(self, log_id: str, after_seq: int, limit: int = 100_000) -> list[bytes]:
        """A log's records after `after_seq`, in seq order, one per seq."""
        rows = self.backend.rows(
            f"SELECT seq, record FROM {self.db}.records WHERE log_id = {{log_id:String}} "
            "AND seq > {after:UInt64} ORDER BY seq LIMIT 1 BY seq LIMIT {limit:UInt32}",
            {"log_id": log_id, "after": after_seq, "limit": limit})
        return [_bytes(r["record"]) for r in rows]

    def record_at(self, log_id: str, seq: int) -> bytes | None:
        found = self._records_at([(log_id, seq)])
        return found.get((log_id, seq))

    def records_at(self, log_id: str, seqs: Sequence[int]) -> dict[int, bytes]:
        found = self._records_at([(log_id, s) for s in seqs])
        return {seq: payload for (_, seq), payload in found.items()}

    def save_logs(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Each log's verification state (`log_id`, `head_seq`, `status` and the rest, kept as
        JSON); the newest saved per log is what `logs()` returns."""
        if not states:
            return
        # The version orders saves: two in one millisecond still replace in order.
        now = self._saved_ms = max(time.time_ns() // 1_000_000, self._saved_ms + 1)
        data = pa.table({
            "log_id": pa.array([str(s["log_id"]) for s in states], pa.string()),
            "updated_ms": pa.array([now] * len(states), pa.int64()),
            "head_seq": pa.array([int(s.get("head_seq") or 0) for s in states], pa.uint64()),
            "status": pa.array([str(s.get("status") or "") for s in states], pa.string()),
            "state": pa.array([orjson.dumps(dict(s)).decode() for s in states], pa.string()),
        }).select(list(LOG_COLUMNS))
        self.backend.insert(f"{self.db}.logs", data)

    def logs(self) -> list[dict[str, Any]]:
        """Every log's newest saved state (the verified head of each log, its status)."""
        rows = self.backend.rows(f"SELECT state FROM {self.db}.logs FINAL ORDER BY log_id")
        return [orjson.loads(r["state"]) for r in rows]

    def count(self, log_id: str | None = None) -> int:
        """Records stored, one per (log_id, seq)."""
        where = "" if log_id is None else " WHERE log_id = {log_id:String}"
        rows = self.backend.rows(
            f"SELECT count() AS n FROM (SELECT DISTINCT log_id, seq FROM {self.db}.records{where})",
            {} if log_id is None else {"log_id": log_id})
        return int(rows[0]["n"])

    def close(self) -> None:
        self.backend.close()


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
