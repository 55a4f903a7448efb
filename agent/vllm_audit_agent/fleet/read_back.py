"""Logs read back from the fleet store for `vllm-audit verify --fleet-store`: every log it
holds, or the records one log wrote in a time range, in seq order, one per seq.

A time range is on when the agent wrote each record (`recorded`, what retention counts from)
and runs on to the log's first checkpoint after it, whose signature covers the range (as an
export does); its start is wherever the range starts (checked by the chain alone up to its
first checkpoint, as a Kafka topic's start is).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vllm_audit_agent.fleet.store import FleetStore

PAGE = 50_000


def stored_log_ids(store: FleetStore) -> list[str]:
    """Every log the store holds records of (records written before log identities: none)."""
    rows = store.backend.rows(
        f"SELECT DISTINCT log_id FROM {store.db}.records WHERE log_id != '' ORDER BY log_id")
    return [str(r["log_id"]) for r in rows]


def seq_range(store: FleetStore, log_id: str, since_ms: int | None = None,
              until_ms: int | None = None) -> tuple[int, int] | None:
    """The first and last seq to read: the log's records written in [since, until), on to the
    first checkpoint at or after the last of them. None: none in the range."""
    where: list[str] = ["log_id = {log_id:String}"]
    params: dict[str, Any] = {"log_id": log_id}
    if since_ms is not None:
        where.append("recorded >= fromUnixTimestamp64Milli({since:Int64})")
        params["since"] = since_ms
    if until_ms is not None:
        where.append("recorded < fromUnixTimestamp64Milli({until:Int64})")
        params["until"] = until_ms
    (found,) = store.backend.rows(
        f"SELECT count() AS n, min(seq) AS lo, max(seq) AS hi FROM {store.db}.records "
        f"WHERE {' AND '.join(where)}", params)
    if not int(found["n"]):
        return None
    lo, hi = int(found["lo"]), int(found["hi"])
    if until_ms is None:
        return lo, hi
    (after,) = store.backend.rows(
        f"SELECT count() AS n, min(seq) AS cp FROM {store.db}.records WHERE log_id = "
        "{log_id:String} AND type = 'checkpoint' AND seq >= {hi:UInt64}",
        {"log_id": log_id, "hi": hi})
    return lo, int(after["cp"]) if int(after["n"]) else hi


def log_payloads(store: FleetStore, log_id: str, first: int, last: int) -> Iterator[bytes]:
    """The log's records from seq `first` to `last`, in seq order, one per seq (paged)."""
    at = first
    while at <= last:
        rows = store.backend.rows(
            f"SELECT seq, record FROM {store.db}.records WHERE log_id = {{log_id:String}} "
            "AND seq >= {at:UInt64} AND seq <= {last:UInt64} ORDER BY seq LIMIT 1 BY seq "
            "LIMIT {page:UInt32}", {"log_id": log_id, "at": at, "last": last, "page": PAGE})
        for row in rows:
            value = row["record"]
            yield value if isinstance(value, bytes) else value.encode()
        if len(rows) < PAGE:
            return
        at = int(rows[-1]["seq"]) + 1
