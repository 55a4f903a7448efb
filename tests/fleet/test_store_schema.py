"""A fleet store made by an earlier schema opens with today's: its missing projections are
added and built over the rows it holds (and not again on the next open); and a listing's
"newest rows first" answer is the one every row grouped gives, page by page, with revisions
out of time order and filters that leave the newest rows short."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from vllm_audit_agent.fleet.backend import Backend, open_backend
from vllm_audit_agent.fleet.migrate import migrate
from vllm_audit_agent.fleet.rows import columns
from vllm_audit_agent.fleet.schema import PROJECTIONS
from vllm_audit_agent.fleet.store import CANDIDATES, FleetStore, TrailQuery

DAY = 86_400_000
NOW = time.time_ns() // 1_000_000
#: The records table as the first fleet store made it (commit 6c93904 to this change).
FIRST_SCHEMA = """CREATE TABLE IF NOT EXISTS {db}.records (
    log_id LowCardinality(String), seq UInt64, type LowCardinality(String),
    ts DateTime64(3) CODEC(Delta, ZSTD(1)), recorded DateTime64(3) CODEC(Delta, ZSTD(1)),
    trail_id String CODEC(ZSTD(1)), revision UInt32,
    event_id String ALIAS concat(trail_id, '/', toString(revision)),
    tenant LowCardinality(String), user String CODEC(ZSTD(1)), model LowCardinality(String),
    state LowCardinality(String), client_request_id String CODEC(ZSTD(1)),
    request_id String CODEC(ZSTD(1)), status_code UInt16, is_error UInt8,
    input_tokens UInt32, output_tokens UInt32, has_content UInt8, record String CODEC(ZSTD(3)),
    INDEX trail_idx trail_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX client_request_idx client_request_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX request_idx request_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX tenant_idx tenant TYPE set(256) GRANULARITY 4,
    INDEX model_idx model TYPE set(256) GRANULARITY 4{projection}
) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(recorded) ORDER BY (log_id, seq)
{settings}"""
BY_USER = """,
    PROJECTION by_user (
        SELECT user, ts, type, tenant, model, state, trail_id, revision, log_id, seq,
               client_request_id
        ORDER BY user, ts
    )"""


def request(seq: int, trail: str, revision: int, ts: int, **fields: Any) -> bytes:
    record = {"type": "request", "log_id": "a" * 32, "seq": seq, "trail_id": trail,
              "revision": revision, "timestamp_ms": ts, "recorded_unix_ms": NOW,
              "tenant": "acme", "user": "alice", "state": "TRAIL_STATE_FINISHED", **fields}
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    opened = open_backend(str(tmp_path / "chdb"))
    try:
        yield opened
    finally:
        opened.close()


def projections_built(backend: Backend, db: str) -> dict[str, list[str]]:
    deadline = time.monotonic() + 60
    while backend.rows("SELECT 1 FROM system.mutations WHERE database = {db:String} "
                       "AND NOT is_done", {"db": db}) and time.monotonic() < deadline:
        time.sleep(0.2)
    rows = backend.rows("SELECT name, projections FROM system.parts WHERE active AND "
                        "database = {db:String} AND table = 'records'", {"db": db})
    return {str(r["name"]): sorted(r["projections"]) for r in rows}


@pytest.mark.parametrize("projection, settings", [
    (BY_USER, "SETTINGS deduplicate_merge_projection_mode = 'rebuild'"),  # the last schema
    ("", ""),  # a table without projections (and a Replacing table refuses one unless told)
], ids=["by_user", "none"])
def test_an_earlier_store_opens_and_gets_its_projections(backend: Backend, projection: str,
                                                          settings: str) -> None:
    db = "old"
    backend.command(f"CREATE DATABASE {db}")
    backend.command(FIRST_SCHEMA.format(db=db, projection=projection, settings=settings))
    rows = [request(i, f"t{i}", 0, NOW - i * 1000, tenant=f"tenant-{i % 3}",
                    user=f"u{i % 5}") for i in range(1, 301)]
    backend.insert(f"{db}.records", columns(rows, NOW))
    before = projections_built(backend, db)
    assert all("by_tenant" not in names for names in before.values())

    store = FleetStore(backend, db)
    built = projections_built(backend, db)
    assert built and all(names == sorted(PROJECTIONS) for names in built.values()), built
    plan = "\n".join(r["explain"] for r in backend.rows(
        f"EXPLAIN SELECT trail_id FROM {db}.records WHERE tenant = 'tenant-1' "
        "ORDER BY ts DESC LIMIT 10"))
    assert "by_tenant" in plan
    page = store.list_trails(TrailQuery(tenant="tenant-1"), 20, None)
    assert [r["trail_id"] for r in page] == [f"t{i}" for i in range(1, 301) if i % 3 == 1][:20]
    assert migrate(backend, db) == []  # opened again: nothing to add


def expected_pages(records: list[dict[str, Any]], keep: Any, limit: int) -> list[list[str]]:
    """What grouping every row gives: the newest revision per trail, by (ts, event id) desc."""
    newest: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["trail_id"] not in newest or r["revision"] > newest[r["trail_id"]]["revision"]:
            newest[r["trail_id"]] = r
    order = sorted((r for r in newest.values() if keep(r)), key=lambda r: (
        r["timestamp_ms"], f"{r['trail_id']}/{r['revision']}"), reverse=True)
    ids = [f"{r['trail_id']}/{r['revision']}" for r in order]
    return [ids[i:i + limit] for i in range(0, len(ids), limit)]


def pages(store: FleetStore, query: TrailQuery, limit: int) -> list[list[str]]:
    out, before = [], None
    while True:
        page = store.list_trails(query, limit, before)
        if not page:
            return out
        out.append([f"{r['trail_id']}/{r['revision']}" for r in page])
        before = (page[-1]["timestamp_ms"], out[-1][-1])


def test_newest_first_pages_equal_grouping_every_row(backend: Backend) -> None:
    """Revisions whose time is older than their trail's first (non-monotonic), trails with
    several revisions among the newest rows, a state only old revisions have, ties in time."""
    rng, records, seq = random.Random(11), [], 0
    for t in range(3 * CANDIDATES):
        ts = NOW - rng.randrange(5 * DAY) // 1000 * 1000  # whole seconds: ties happen
        for revision in range(rng.choice([1, 1, 2, 4])):
            seq += 1
            stamp = ts if rng.random() < 0.8 else ts - rng.randrange(3 * DAY)
            state = "TRAIL_STATE_ACTIVE" if rng.random() < 0.1 else "TRAIL_STATE_FINISHED"
            records.append({"seq": seq, "trail_id": f"t{t:04d}", "revision": revision,
                            "timestamp_ms": stamp, "state": state,
                            "user": "alice" if t % 4 else "bob"})
    store = FleetStore(backend, "lists")
    rng.shuffle(records)
    assert store.insert([request(r["seq"], r["trail_id"], r["revision"], r["timestamp_ms"],
                                 state=r["state"], user=r["user"]) for r in records]
                        ) == len(records)
    recent = [r for r in records if r["timestamp_ms"] >= NOW - 2 * DAY]
    for query, rows, keep in [
        (TrailQuery(), records, lambda r: True),
        (TrailQuery(user="alice"), records, lambda r: r["user"] == "alice"),
        # the range applies to rows, before grouping (as the store's WHERE does)
        (TrailQuery(tenant="acme", since_ms=NOW - 2 * DAY), recent, lambda r: True),
        (TrailQuery(state="TRAIL_STATE_ACTIVE"), records,
         lambda r: r["state"] == "TRAIL_STATE_ACTIVE"),
    ]:
        assert pages(store, query, 50) == expected_pages(rows, keep, 50), query


def test_the_newest_rows_do_not_decide_when_their_trails_newest_revision_is_older(
        backend: Backend) -> None:
    """The CANDIDATES newest rows are revision 0 of trails whose revision 1 is ten days older;
    fifty trails written a day ago are newer than all of those: they are the first page."""
    store = FleetStore(backend, "older")
    payloads, seq = [], 0
    for i in range(CANDIDATES):
        for revision, ts in ((0, NOW - i), (1, NOW - 10 * DAY - i)):
            seq += 1
            payloads.append(request(seq, f"new-{i:03d}", revision, ts))
    for i in range(50):
        seq += 1
        payloads.append(request(seq, f"mid-{i:02d}", 0, NOW - DAY - i))
    store.insert(payloads)
    page = store.list_trails(TrailQuery(user="alice"), 50, None)
    assert [r["trail_id"] for r in page] == [f"mid-{i:02d}" for i in range(50)]
