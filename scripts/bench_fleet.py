"""Fleet store figures (`python scripts/benchmarks.py fleet`), on chDB in this process:

- records/s into chDB from one consumer path: FleetStore.insert of canonical request records
  (real trail records, ~2.7 KB, chained: hash and prev_hash), in the consumer's batches;
- the same with each log verified as it is consumed (the consumer's write path: the next
  batch verified while chDB inserts this one, and the two one after the other), over a real
  signed record log;
- p99 of "one user's last 30 days, newest 50" (list_trails with a user filter), and of one
  tenant's, over 10M records (1,000 users, 10 tenants, 40 logs, 90 days), made in SQL
  (fleet_synth.py says how, and why that is honest about the rows);
- bytes per stored summary record: the records table's bytes on disk (system.parts, active
  parts as inserted, in 1M-row inserts) over its rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import fleet_synth  # beside this script (scripts/ is sys.path[0])
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.config import FleetConfig
from vllm_audit_agent.fleet.pipeline import WritePath
from vllm_audit_agent.fleet.store import FleetStore, TrailQuery
from vllm_audit_agent.fleet.verifier import FleetVerifier
from vllm_audit_agent.model.record import trail_record
from vllm_audit_agent.records.chain import Signer
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.records.read_only import read_records

DAY_MS, DAYS, LOGS = fleet_synth.DAY_MS, fleet_synth.DAYS, fleet_synth.LOGS  # the same rows
USERS, TENANTS, MODELS = fleet_synth.USERS, fleet_synth.TENANTS, fleet_synth.MODELS
BATCH = FleetConfig().max_batch_records  # the consumer's default --max-batch-records
#: The write path's figures before each record was parsed once (README, at load ~1.5; run
#: alternately with the new code at load ~1.1 the old one gave 26.2k pipelined, 20.9k serial).
BEFORE = {"insert": "44.3k", "consumed": "31.7k", "serial": "20.9k at load 1.1"}


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


def bench_insert(store: FleetStore, n: int, now_ms: int) -> tuple[float, float, int]:
    """(records/s of FleetStore.insert alone: by the wall clock, by this process's CPU time
    — chDB's threads included —, bytes of the payloads)."""
    wall, cpu, size = 0.0, 0.0, 0
    for batch in records(n, now_ms, seed=11):
        size += sum(map(len, batch))
        t0, c0 = time.perf_counter(), time.process_time()
        store.insert(batch)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
    return n / wall, n / cpu, size // n


def signed_log(n: int, tmp: Path) -> tuple[Ed25519PrivateKey, list[bytes]]:
    """A real signed record log of `n` summary records (and its checkpoints), as published."""
    key = Ed25519PrivateKey.generate()
    template = orjson.loads(next(records(1, 0))[0])
    chain_fields = ("log_id", "seq", "prev_hash", "hash", "recorded_unix_ms")
    log = RecordLog(tmp / "log", 1 << 34, "never", Signer(key), checkpoint_every=1000)
    for i in range(n):
        log.append({k: v for k, v in template.items() if k not in chain_fields}
                   | {"trail_id": f"t{i}", "request_id": f"t{i}", "event_id": f"t{i}/0",
                      "user": f"user-{i % USERS:04d}"})
    log.checkpoint()
    asyncio.run(log.write_pending())
    return key, list(read_records(tmp / "log"))


def bench_consume(key: Ed25519PrivateKey, payloads: list[bytes], db: str, pipelined: bool
                  ) -> tuple[float, float, float]:
    """records/s through the consumer's write path (fleet/pipeline.py, as FleetConsumer runs
    it, in its batches): each log verified (chain, tree, signed checkpoints) and the rows
    built, then FleetStore's insert and the logs' states saved — the next batch prepared while
    chDB inserts this one (`pipelined`), or one after the other. (wall, per CPU-second, µs of
    CPU per record in `prepare`'s thread: the Python half, which holds the GIL)."""
    store = FleetStore.open(db)
    prepare_cpu = 0.0
    try:
        path = WritePath(store, FleetVerifier(store, [key.public_key()]))
        t0, c0 = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(1) as writer:
            writing: Future[int] | None = None
            for i in range(0, len(payloads), BATCH):
                p0 = time.thread_time()
                batch = path.prepare(payloads[i:i + BATCH], {})
                prepare_cpu += time.thread_time() - p0
                if writing is not None:
                    writing.result()
                writing = writer.submit(path.write, batch)
                if not pipelined:
                    writing.result()
            if writing is not None:
                writing.result()
        spent, cpu = time.perf_counter() - t0, time.process_time() - c0
        (state,) = store.logs()
        assert state["status"] == "verified" and state["head_seq"] == len(payloads), state
    finally:
        store.close()
    return len(payloads) / spent, len(payloads) / cpu, prepare_cpu / len(payloads) * 1e6


def bench_list(store: FleetStore, now_ms: int, scope: str, count: int, rounds: int
               ) -> tuple[float, float, float]:
    """(p50, p99, p99 of this process's CPU time) ms of one user's (or tenant's) newest 50
    over the last 30 days."""
    rng = random.Random(3)
    times, cpu = [], []
    for _ in range(rounds):
        who = f"user-{rng.randrange(count):04d}" if scope == "user" else \
            f"tenant-{rng.randrange(count)}"
        query = TrailQuery(**{scope: who}, since_ms=now_ms - 30 * DAY_MS)
        t0, c0 = time.perf_counter(), time.process_time()
        page = store.list_trails(query, 50, None)
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        assert len(page) == 50 and all(r[scope] == who for r in page)
        assert [r["timestamp_ms"] for r in page] == sorted(
            (r["timestamp_ms"] for r in page), reverse=True)
    times.sort()
    cpu.sort()
    p99 = int(len(times) * 0.99) - 1
    return statistics.median(times), times[p99], cpu[p99]


def stored_bytes(store: FleetStore) -> tuple[int, int, int]:
    """(rows, bytes on disk, active parts) of the records table."""
    rows = store.backend.rows(
        f"SELECT sum(rows) AS r, sum(bytes_on_disk) AS b, count() AS p FROM system.parts "
        f"WHERE active AND database = '{store.db}' AND table = 'records'")
    return int(rows[0]["r"]), int(rows[0]["b"]), int(rows[0]["p"])


def main(print_rows: Callable[[list[tuple[str, str, str]]], None], total: int = 10_000_000,
         insert_n: int = 200_000, consume_n: int = 100_000) -> None:
    """FLEET_BENCH_STORE=DIR keeps the 10M-row store there (made once: ~5 minutes on two idle
    cores) for the query figures of later runs; FLEET_BENCH_WRITE_ONLY=1 prints the write
    path's figures only (no 10M-row store, no queries)."""
    now_ms = time.time_ns() // 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        store = FleetStore.open(f"{tmp}/ins")
        try:
            rate, rate_cpu, payload_bytes = bench_insert(store, insert_n, now_ms)
        finally:
            store.close()
    with tempfile.TemporaryDirectory() as tmp:
        key, payloads = signed_log(consume_n, Path(tmp))
        # Best of two, the modes alternated: on a shared machine the second core (what the
        # pipeline uses) comes and goes.
        runs: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
        for n in range(2):
            for pipelined in (True, False):
                runs[pipelined].append(bench_consume(key, payloads, f"{tmp}/db{n}{pipelined}",
                                                     pipelined))
        consumed, serial = max(runs[True]), max(runs[False])
    write_rows = [
        (f"fleet store insert, one consumer path ({insert_n // 1000}k records, batches of "
         f"{BATCH}): wall / per CPU-second", f"{rate / 1000:.1f}k / {rate_cpu / 1000:.1f}k "
         "records/s", f">= 50k/s (before: {BEFORE['insert']})"),
        ("  canonical record size (summary level)", f"{payload_bytes} B", ""),
        (f"  with each log verified as consumed ({consume_n // 1000}k signed records), "
         "the next batch verified while chDB inserts (best of 2)", f"{consumed[0] / 1000:.1f}k / "
         f"{consumed[1] / 1000:.1f}k records/s", f">= 50k/s (before: {BEFORE['consumed']})"),
        ("  the same, verify then insert one after the other (best of 2)",
         f"{serial[0] / 1000:.1f}k / {serial[1] / 1000:.1f}k records/s",
         f"(before: {BEFORE['serial']})"),
        ("  where a record's CPU goes: prepare (one parse, verify, columns; holds the GIL) / "
         "the rest (chDB's insert and merges, states)",
         f"{serial[2]:.1f} / {1e6 / serial[1] - serial[2]:.1f} µs", ""),
    ]
    if os.environ.get("FLEET_BENCH_WRITE_ONLY"):
        print_rows([*write_rows, _load_row()])
        return
    with tempfile.TemporaryDirectory() as tmp:
        kept = os.environ.get("FLEET_BENCH_STORE")
        store = FleetStore.open(kept or f"{tmp}/big")
        try:
            build_s = None
            if store.count() != total:
                store.backend.command(f"TRUNCATE TABLE {store.db}.records")
                t0 = time.perf_counter()
                fleet_synth.fill(store, total, now_ms)
                build_s = time.perf_counter() - t0
            else:  # made by an earlier run: its clock
                now_ms = int(store.backend.rows(
                    f"SELECT toUnixTimestamp64Milli(max(ts)) AS t FROM {store.db}.records")[0]["t"])
            same = fleet_synth.check(store)
            user = bench_list(store, now_ms, "user", USERS, 200)
            tenant = bench_list(store, now_ms, "tenant", TENANTS, 100)
            rows, size, parts = stored_bytes(store)
        finally:
            store.close()
    print_rows([
        *write_rows,
        (f"one user's last 30 days, newest 50, over {total / 1e6:g}M records, p50 / p99 "
         "(p99 CPU)", f"{user[0]:.1f} / {user[1]:.1f} ({user[2]:.1f}) ms", "p99 <= 100 ms"),
        (f"one tenant's last 30 days, newest 50 ({TENANTS} tenants), p50 / p99 (p99 CPU)",
         f"{tenant[0]:.1f} / {tenant[1]:.1f} ({tenant[2]:.1f}) ms", ""),
        (f"  {total / 1e6:g}M rows made in SQL (fleet_synth.py: the record's bytes, its "
         "columns)", "kept from a run before" if build_s is None else f"{build_s:.0f} s", ""),
        ("  sample rows whose columns equal the store's insert of their record",
         f"{same} / 1000", "1000 / 1000"),
        (f"bytes per stored summary record (system.parts, {parts} parts, as inserted)",
         f"{size / rows:.0f} B", "<= 200 B"),
        _load_row(),
    ])


def _load_row() -> tuple[str, str, str]:
    return ("  load average (1 min) at the end: figures by the wall clock need an idle machine",
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", "")
