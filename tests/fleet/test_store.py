"""The fleet store on a real chDB: what an audit asks of it, with duplicates and old revisions
never shown (the consumer is at-least-once and trails are re-recorded per revision)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from vllm_audit_agent.fleet.store import FleetStore, TrailQuery

LOG = "a" * 32
DAY = 86_400_000
NOW = 1_790_000_000_000


def request(seq: int, trail: str, revision: int, ts: int, **fields: Any) -> bytes:
    record = {"type": "request", "log_id": LOG, "seq": seq, "trail_id": trail,
              "revision": revision, "timestamp_ms": ts, "tenant": "acme", "user": "alice",
              "model": "m1", "state": "TRAIL_STATE_FINISHED", "status_code": 200,
              "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 4, **fields}
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def trails(records: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(r["trail_id"], r["revision"]) for r in records]


def test_a_batch_stored_twice_shows_once_newest_revision_first(store: FleetStore) -> None:
    batch = [request(1, "t1", 0, NOW - 3000, state="TRAIL_STATE_ACTIVE"),
             request(2, "t2", 0, NOW - 2000), request(3, "t1", 1, NOW - 3000),
             request(4, "t3", 0, NOW - 1000, user="bob", tenant="other", status_code=500),
             orjson.dumps({"type": "checkpoint", "log_id": LOG, "seq": 5,
                           "recorded_unix_ms": NOW})]
    assert store.insert(batch) == 5
    assert store.insert(batch[::-1]) == 5  # re-delivered, in another order
    assert store.count() == 5
    assert trails(store.list_trails(TrailQuery(), 10, None)) == [("t3", 0), ("t2", 0),
                                                                  ("t1", 1)]
    # the state is the newest revision's: t1 is no longer active
    assert store.list_trails(TrailQuery(state="TRAIL_STATE_ACTIVE"), 10, None) == []
    assert trails(store.list_trails(TrailQuery(tenant="acme", user="alice"), 10, None)) == [
        ("t2", 0), ("t1", 1)]
    found = store.get_trail("t1")
    assert found is not None and found["revision"] == 1
    assert store.get_trail("t3", tenant="acme") is None  # another tenant's trail
    assert [orjson.loads(p)["seq"] for p in store.export(TrailQuery())] == [1, 3, 2, 4]
    assert store.export(TrailQuery(tenant="acme")).__next__() == batch[0]  # canonical bytes
    assert store.aggregates(TrailQuery(), ["tenant"]) == [
        {"tenant": "acme", "requests": 2, "input_tokens": 20, "output_tokens": 8, "errors": 0},
        {"tenant": "other", "requests": 1, "input_tokens": 10, "output_tokens": 4, "errors": 1}]


def test_pages_follow_the_cursor_and_time_range(store: FleetStore) -> None:
    store.insert([request(i, f"t{i:02d}", 0, NOW - i * DAY) for i in range(1, 41)])
    seen: list[str] = []
    before = None
    while True:
        page = store.list_trails(TrailQuery(since_ms=NOW - 30 * DAY), 7, before)
        if not page:
            break
        seen += [r["trail_id"] for r in page]
        before = (page[-1]["timestamp_ms"], page[-1]["event_id"] if "event_id" in page[-1]
                  else f"{page[-1]['trail_id']}/{page[-1]['revision']}")
    assert seen == [f"t{i:02d}" for i in range(1, 31)]
    by_day = store.aggregates(TrailQuery(until_ms=NOW - 37 * DAY + 1), ["day", "model"])
    assert [row["requests"] for row in by_day] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="cannot group by"):
        store.aggregates(TrailQuery(), ["pod"])


def test_aggregates_filtered_by_tenant_user_and_model(store: FleetStore) -> None:
    """A filter on a column the sums also group by (ClickHouse once read the WHERE's `tenant`
    as the per-trail alias: ILLEGAL_AGGREGATION)."""
    store.insert([request(1, "t1", 0, NOW), request(2, "t2", 0, NOW, tenant="other"),
                  request(3, "t3", 0, NOW, user="bob", model="m2"),
                  request(4, "t1", 1, NOW, status_code=500)])
    rows = store.aggregates(TrailQuery(tenant="acme", user="alice", model="m1"),
                            ["tenant", "user", "model"])
    assert rows == [{"tenant": "acme", "user": "alice", "model": "m1", "requests": 1,
                     "input_tokens": 10, "output_tokens": 4, "errors": 1}]
    assert [r["requests"] for r in store.aggregates(TrailQuery(tenant="acme"), [])] == [2]


def test_each_logs_state_is_the_newest_saved(store: FleetStore) -> None:
    store.save_logs([{"log_id": LOG, "head_seq": 3, "status": "verified"}])
    store.save_logs([{"log_id": LOG, "head_seq": 9, "status": "broken", "reason": "gap"}])
    assert store.logs() == [{"log_id": LOG, "head_seq": 9, "status": "broken",
                             "reason": "gap"}]
    store.insert([request(i, f"t{i}", 0, NOW) for i in range(1, 6)])
    assert [orjson.loads(p)["seq"] for p in store.records_of(LOG, 2)] == [3, 4, 5]
    assert store.record_at(LOG, 4) == request(4, "t4", 0, NOW)


def test_retention_counts_from_when_the_agent_wrote_the_record(store: FleetStore) -> None:
    """An engine clock that stamped its request in 1970 (the hook's time_unix_nano) must not
    make the store delete the acknowledged record at its first TTL merge: retention goes by
    the agent's recorded_unix_ms. A record old by that time is deleted as its class says."""
    import time

    now = time.time_ns() // 1_000_000
    store.insert([request(1, "old-clock", 0, 10**9, recorded_unix_ms=now),
                  request(2, "written-long-ago", 0, now, recorded_unix_ms=now - 400 * DAY),
                  orjson.dumps({"type": "checkpoint", "log_id": LOG, "seq": 3,
                                "recorded_unix_ms": now - 200 * DAY})])
    store.backend.command(f"OPTIMIZE TABLE {store.db}.records FINAL")  # applies the TTLs
    assert [orjson.loads(p)["trail_id"] for p in store.export(TrailQuery())] == ["old-clock"]
    assert store.count() == 2  # the checkpoint is evidence: kept 400 days
