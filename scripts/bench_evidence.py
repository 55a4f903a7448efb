"""Evidence benchmarks (issue 18): what the Merkle tree, the checkpoints and the proofs cost.

    .venv/bin/python scripts/benchmarks.py evidence

- checkpoint:   RecordLog.checkpoint() (the C2SP note and the record signed, the record
                chained and made a leaf) and its write (WAL append + fsync, --wal-fsync batch,
                the agent's default) on a real log of ~100k records; the checkpoint's bytes.
- tree cost:    RecordLog.append of real trail records with the tree and with it switched
                off (the log as it was before issue 18: chain only), medians of alternating
                rounds; and the tree's own work per record (leaf hash + compact-range append).
                The agent's figures run under the agent's collector thresholds (server.py
                COLLECTOR_THRESHOLDS, as `vllm-audit agent` sets them): under Python's
                defaults the per-record tree snapshot tuples trigger collections that walk
                every live record, ~15 us a record here instead of ~1.5. The CLI's (verify,
                prove) run under Python's defaults, as the CLI does.
- proof @ 10M:  the inclusion proof `prove` computes, at 10M leaves. The leaf hashes are made
                synthetically (SHA-256 of a counter: reading 10M real records would measure
                the parser, see the next figure); the bundle is prove's own dict around a real
                record and a real signed checkpoint note of that size.
- verify:       `vllm-audit verify` and `vllm-audit prove` (the CLI, in process) on a real log
                of 100k trail records; `prove` reads and hashes the whole log, so its time at
                10M records is that rate extrapolated, printed as such.

About a minute and a half on two cores; memory peaks near 1.5 GB (the 10M proof).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.cli.main import main as cli
from vllm_audit_agent.model.record import trail_record
from vllm_audit_agent.records.chain import Signer, public_pem
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.records.merkle import (
    CompactRange,
    inclusion_proof,
    leaf_hash,
    root_from_inclusion,
    subtree_after,
)
from vllm_audit_agent.records.note import Checkpoint, origin_of, sign_checkpoint
from vllm_audit_agent.records.prove import BUNDLE_FORMAT, LeafArray
from vllm_audit_agent.server import COLLECTOR_THRESHOLDS

Row = tuple[str, str, str]


@contextlib.contextmanager
def agent_collector() -> Iterator[None]:
    """The garbage collector as the agent process runs it (freeze_startup_heap)."""
    before = gc.get_threshold()
    gc.collect()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def record(i: int) -> dict[str, Any]:
    """A real trail record (~1 KB stored), as the agent appends for a finished request."""
    return trail_record(q.TrailSummary(
        request_id=f"chatcmpl-{i:016x}", model="tiny-llama", user="alice", client_ip="10.0.0.1",
        state=q.TRAIL_STATE_FINISHED, prompt_tokens=128, completion_tokens=256,
        latency_ms=812.5, ttft_ms=41.25, finish_reason="stop", status_code=200,
        created_unix_ms=1_790_000_000_000 + i))


def new_log(directory: Path, signer: Signer, checkpoint_every: int) -> RecordLog:
    return RecordLog(directory, 1 << 36, "batch", signer, checkpoint_every=checkpoint_every,
                     checkpoint_interval=1e9, tail_max_bytes=1 << 20)


def append_rate(directory: Path, signer: Signer, n: int, tree: bool) -> float:
    """Records/s through RecordLog.append alone (no checkpoints, nothing written)."""
    log = new_log(directory, signer, checkpoint_every=1 << 40)
    if not tree:
        log.tree = None  # the chain alone, as before the Merkle tree
    records = [record(i) for i in range(n)]
    start = time.perf_counter()
    for r in records:
        log.append(r)
    rate = n / (time.perf_counter() - start)
    log.close()
    return rate


def bench_tree_cost(n: int = 40_000, rounds: int = 5) -> list[Row]:
    signer = Signer(Ed25519PrivateKey.generate())
    with_tree: list[float] = []
    without: list[float] = []
    for i in range(rounds):  # alternating, so drift on a shared machine hits both
        for tree, rates in ((True, with_tree), (False, without)):
            with tempfile.TemporaryDirectory() as tmp:
                rates.append(append_rate(Path(tmp) / f"r{i}", signer, n, tree))
    on, off = statistics.median(with_tree), statistics.median(without)
    per_record_us = (1 / on - 1 / off) * 1e6
    # The tree's own work, alone: leaf hash of ~1 KB + compact-range append.
    payload = b"x" * 1000
    tree_range = CompactRange()
    count = 200_000
    start = time.perf_counter()
    for _ in range(count):
        tree_range.append(leaf_hash(payload))
    alone_us = (time.perf_counter() - start) / count * 1e6
    return [
        (f"RecordLog.append, chain + tree (median of {rounds})", f"{on / 1000:.1f}k records/s", ""),
        ("RecordLog.append, chain only (tree off: before)", f"{off / 1000:.1f}k records/s", ""),
        ("  the tree's cost per appended record", f"{per_record_us:.2f} us "
         f"({(off - on) / off * 100:.0f}% of append)", ""),
        ("  leaf hash (1 KB) + compact-range append alone", f"{alone_us:.2f} us/record", ""),
    ]


async def build_log(directory: Path, signer: Signer, n: int) -> RecordLog:
    """A real log of `n` trail records with a checkpoint every 1000 (the agent's default),
    written and synced."""
    log = new_log(directory, signer, checkpoint_every=1000)
    for i in range(n):
        log.append(record(i))
        if i % 5000 == 4999:
            await log.write_pending()
    await log.write_pending()
    return log


async def bench_checkpoint(log: RecordLog, count: int = 200) -> list[Row]:
    signing: list[float] = []
    writing: list[float] = []
    for _ in range(count):
        log.append(record(log.head_seq))  # a new head for each checkpoint
        await log.write_pending()
        t0 = time.perf_counter()
        seq = log.checkpoint()
        t1 = time.perf_counter()
        await log.write_pending()
        t2 = time.perf_counter()
        signing.append((t1 - t0) * 1e6)
        writing.append((t2 - t1) * 1e6)
    (last,) = await log.read(seq - 1, 1)  # the newest checkpoint's stored bytes
    size = log.tree.size if log.tree is not None else 0
    return [
        (f"checkpoint() at tree size {size:,} (median of {count})",
         f"{statistics.median(signing):.0f} us (p99 {quantile(signing, 0.99):.0f})", ""),
        ("  its write: WAL append + fsync (batch)",
         f"{statistics.median(writing):.0f} us (p99 {quantile(writing, 0.99):.0f})", ""),
        ("  checkpoint record stored", f"{len(last.value)} bytes", ""),
    ]


def quantile(values: list[float], q_: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q_))]


def synthetic_leaves(n: int) -> LeafArray:
    leaves = LeafArray()
    data = leaves.data
    sha = hashlib.sha256
    for i in range(n):
        data += sha(b"\x00" + i.to_bytes(8, "big")).digest()
    return leaves


def bench_proof_at(n: int, sample_record: bytes, signer: Signer) -> list[Row]:
    t0 = time.perf_counter()
    leaves = synthetic_leaves(n)
    made_s = time.perf_counter() - t0
    index = n // 3
    t0 = time.perf_counter()
    path = inclusion_proof(index, n, subtree_after(CompactRange(), leaves))
    proof_s = time.perf_counter() - t0
    # The root the path leads to, for a real signed note of that size.
    root = root_from_inclusion(index, n, leaves[index], path)
    log_id = "0" * 32
    note = sign_checkpoint(Checkpoint(origin_of(log_id), n, root), signer.private_key)
    bundle = {
        "format": BUNDLE_FORMAT, "log_id": log_id, "origin": origin_of(log_id),
        "leaf_index": index, "tree_size": n, "record": sample_record.decode(),
        "inclusion_path": [node.hex() for node in path], "checkpoint": note.text(),
        "log_public_key": "00" * 32,
    }
    size = len(json.dumps(bundle, indent=2)) + 1  # as `prove` writes it (indented JSON)
    compact = len(json.dumps(bundle, separators=(",", ":")))
    return [
        (f"proof bundle at {n / 1e6:.0f}M records", f"{size:,} bytes ({compact:,} compact)", ""),
        ("  of which the inclusion path", f"{len(path)} hashes, {len(path) * 32} bytes raw", ""),
        (f"  inclusion_proof over {n / 1e6:.0f}M leaf hashes", f"{proof_s:.1f} s", ""),
        ("  (synthetic leaf hashes, made in)", f"{made_s:.1f} s", ""),
    ]


def timed_cli(argv: list[str]) -> tuple[float, int, str]:
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(argv)
    return time.perf_counter() - start, code, out.getvalue()


def bench_verify(directory: Path, public: Path, records: int, seq: int) -> tuple[list[Row], float]:
    verify_s, code, _ = timed_cli(["verify", str(directory), "--public-key", str(public),
                                   "--allow-unsigned-tail"])
    assert code == 0, "the benchmark's log does not verify"
    prove_s, code, bundle = timed_cli(["prove", str(directory), "--seq", str(seq),
                                       "--public-key", str(public)])
    assert code == 0, "prove failed on the benchmark's log"
    prove_rate = records / prove_s
    return [
        (f"vllm-audit verify, real log of {records // 1000}k records",
         f"{records / verify_s / 1000:.1f}k records/s ({verify_s:.1f} s)", ""),
        ("vllm-audit prove, same log", f"{prove_s:.2f} s, bundle {len(bundle):,} bytes", ""),
    ], prove_rate


def measure() -> list[Row]:
    signer = Signer(Ed25519PrivateKey.generate())
    with agent_collector():
        rows = bench_tree_cost()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "records"
        with agent_collector():
            log = asyncio.run(build_log(directory, signer, 100_000))
            rows += asyncio.run(bench_checkpoint(log))
        seq = log.head_seq // 2 + 1
        (entry,) = asyncio.run(log.read(seq - 1, 1))
        sample = entry.value  # a request record (or a checkpoint), for the 10M bundle
        total = log.head_seq
        log.close()
        public = Path(tmp) / "log.pub"
        public.write_bytes(public_pem(signer.public_key))
        verify_rows, prove_rate = bench_verify(directory, public, total, seq)
    proof_rows = bench_proof_at(10_000_000, sample, signer)
    rows += verify_rows
    rows.append(("  prove at 10M records (its read + hash rate, extrapolated)",
                 f"~{10_000_000 / prove_rate:.0f} s", ""))
    rows += proof_rows
    return rows


def main(print_rows: Callable[[list[Row]], None]) -> None:
    print(f"evidence (Python {sys.version.split()[0]}, temp dir {tempfile.gettempdir()})")
    print_rows(measure())
