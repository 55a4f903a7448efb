"""Fleet store figures (`python scripts/benchmarks.py fleet`), on chDB in this process:

- records/s into chDB from one consumer path: FleetStore.insert of canonical request records
  (real trail records, ~2.7 KB, chained: hash and prev_hash), in the consumer's batches;
- p99 of "one user's last 30 days, newest 50" (list_trails with a user filter) over 1M
  records (1,000 users, 40 logs, 90 days; 10M is too slow to build on this 2-core machine);
- bytes per stored summary record: the records table's bytes on disk (system.parts, active
  parts, after the merges settle) over its rows.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

import orjson

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.fleet.store import FleetStore, TrailQuery
from vllm_audit_agent.model.record import trail_record

DAY_MS = 86_400_000
USERS, LOGS, TENANTS, MODELS, DAYS = 1_000, 40, 10, 5, 90
BATCH = 5_000  # the consumer's default --max-batch-records


def records(n: int, now_ms: int, seed: int = 7) -> Iterator[list[bytes]]:
    """`n` summary-level request records over LOGS chained logs, in BATCH-sized lists."""
    rng = random.Random(seed)
    template = trail_record(q.TrailSummary(
        request_id="x", model="m", user="u", tenant="t", client_ip="10.0.0.1",
        state=q.TRAIL_STATE_FINISHED, prompt_tokens=1, completion_tokens=1, latency_ms=1.0,
        ttft_ms=1.0, finish_reason="stop", status_code=200, created_unix_ms=1))
    heads = {f"{i:032x}": (0, "0" * 64) for i in range(LOGS)}
    log_ids = list(heads)
    start = now_ms - DAYS * DAY_MS
    batch: list[bytes] = []
    for i in range(n):
        log_id = log_ids[i % LOGS]
        seq, prev = heads[log_id]
        t = start + (DAYS * DAY_MS) * i // n
        rid = f"chatcmpl-{i:016x}"
        record = dict(template, type="request", log_id=log_id, seq=seq + 1, prev_hash=prev,
                      recorded_unix_ms=t + 900, trail_id=rid, request_id=rid,
                      event_id=f"{rid}/0", timestamp_ms=t, created_unix_ms=t,
                      finished_unix_ms=t + 812, user=f"user-{rng.randrange(USERS):04d}",
                      tenant=f"tenant-{rng.randrange(TENANTS)}",
                      model=f"model-{rng.randrange(MODELS)}",
                      prompt_tokens=rng.randrange(2000), completion_tokens=rng.randrange(800),
                      latency_ms=rng.random() * 2000, ttft_ms=rng.random() * 100)
        record["gen_ai.request.model"] = record["model"]
        record["gen_ai.usage.input_tokens"] = record["prompt_tokens"]
        record["gen_ai.usage.output_tokens"] = record["completion_tokens"]
        record["hash"] = digest = hashlib.sha256(orjson.dumps(
            record, option=orjson.OPT_SORT_KEYS)).hexdigest()
        heads[log_id] = (seq + 1, digest)
        batch.append(orjson.dumps(record, option=orjson.OPT_SORT_KEYS))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def bench_insert(store: FleetStore, n: int, now_ms: int) -> tuple[float, int]:
    """(records/s of FleetStore.insert alone, bytes of the payloads)."""
    spent, size = 0.0, 0
    for batch in records(n, now_ms, seed=11):
        size += sum(map(len, batch))
        t0 = time.perf_counter()
        store.insert(batch)
        spent += time.perf_counter() - t0
    return n / spent, size // n


def bench_user_query(store: FleetStore, now_ms: int, rounds: int = 200) -> tuple[float, float]:
    """(p50, p99) ms of one user's newest 50 over the last 30 days."""
    rng = random.Random(3)
    times = []
    for _ in range(rounds):
        user = f"user-{rng.randrange(USERS):04d}"
        t0 = time.perf_counter()
        page = store.list_trails(TrailQuery(user=user, since_ms=now_ms - 30 * DAY_MS), 50, None)
        times.append((time.perf_counter() - t0) * 1000)
        assert page and all(r["user"] == user for r in page)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def stored_bytes(store: FleetStore) -> tuple[int, int]:
    rows = store.backend.rows(
        f"SELECT sum(rows) AS r, sum(bytes_on_disk) AS b FROM system.parts WHERE active "
        f"AND database = '{store.db}' AND table = 'records'")
    return int(rows[0]["r"]), int(rows[0]["b"])


def main(print_rows: Callable[[list[tuple[str, str, str]]], None], total: int = 1_000_000,
         insert_n: int = 200_000) -> None:
    now_ms = time.time_ns() // 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        store = FleetStore.open(f"{tmp}/ins")
        try:
            rate, payload_bytes = bench_insert(store, insert_n, now_ms)
        finally:
            store.close()
    with tempfile.TemporaryDirectory() as tmp:
        store = FleetStore.open(f"{tmp}/big")
        try:
            t0 = time.perf_counter()
            for batch in records(total, now_ms):
                store.insert(batch)
            build_s = time.perf_counter() - t0
            store.backend.command(f"OPTIMIZE TABLE {store.db}.records FINAL")
            p50, p99 = bench_user_query(store, now_ms)
            rows, size = stored_bytes(store)
        finally:
            store.close()
    print_rows([
        (f"fleet store insert, one consumer path ({insert_n // 1000}k records, batches of "
         f"{BATCH})", f"{rate / 1000:.1f}k records/s", ">= 50k/s"),
        ("  canonical record size (summary level)", f"{payload_bytes} B", ""),
        (f"one user's last 30 days, newest 50, over {total / 1e6:g}M records, p50 / p99",
         f"{p50:.1f} / {p99:.1f} ms", "p99 <= 100 ms (at 10M)"),
        ("  building the table (generate + insert)", f"{build_s:.0f} s", ""),
        ("bytes per stored summary record (system.parts, merged)",
         f"{size / rows:.0f} B", "<= 200 B"),
    ])
