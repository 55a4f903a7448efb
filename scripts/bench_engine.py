"""Throughput cost of the hook on the real CPU engine, level by level, interleaved.

    .venv/bin/python scripts/bench_engine.py [ROUNDS]

Two offline `LLM` runs of the tiny model, JSON-schema structured output, 64 concurrent
requests of 256 tokens per round:

1. hook disabled (nothing patched): the baseline;
2. hook enabled with a running agent, the agent switching the level between rounds
   (off, summary, full, full-with-allowed-sets, rotated each of ROUNDS rounds), so every
   level runs in the same process under the same conditions.

Prints decode tokens/s per level (median of rounds) and the cost against level off and
against the disabled run. Targets (DESIGN.md): summary <= 1%, full <= 5%, sets <= 15%.
About three minutes; everything it starts it stops.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import procs  # noqa: E402 - the same process helpers the tests use
from harness.tiny_model import make_tiny_model  # noqa: E402

LEVELS = ("off", "summary", "full", "full-with-allowed-sets")
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer"}}}
REQUESTS, MAX_TOKENS = 64, 256
#: A pushed level reaches both hooks in milliseconds; this is a wide margin.
PROPAGATION_S = 0.5


def worker(model: str, levels: list[str], query_address: str, out_path: str) -> None:
    """Runs inside the benchmark's child process: one engine, a round per entry of levels."""
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from vllm_audit.v1 import query_pb2, query_pb2_grpc
    from vllm_audit_agent.config import parse_level

    llm = LLM(model=model, dtype="float32", max_model_len=512, enforce_eager=True,
              gpu_memory_utilization=0.1, seed=0, max_num_seqs=REQUESTS)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True,
                            structured_outputs=StructuredOutputsParams(json=SCHEMA))
    prompts = [f"person number {i}" for i in range(REQUESTS)]
    llm.generate(prompts[:8], params, use_tqdm=False)  # warm-up: compile grammars, caches
    control = None
    if query_address:
        from vllm_audit_agent.client import channel

        # The local agent's admin token, found through its data dir (VLLM_AUDIT_DATA_DIR).
        token = (Path(os.environ["VLLM_AUDIT_DATA_DIR"]) / "admin.token").read_text().strip()
        control = query_pb2_grpc.ControlServiceStub(channel(query_address, token))
    results = []
    for level in levels:
        if control is not None:
            control.SetAuditLevel(query_pb2.SetAuditLevelRequest(level=parse_level(level)))
            time.sleep(PROPAGATION_S)
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        results.append({"level": level, "tokens_per_s": tokens / elapsed})
    Path(out_path).write_text(json.dumps(results))


def run_worker(model: Path, levels: list[str], env: dict[str, str], query: str,
               out: Path) -> list[dict[str, object]]:
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            f"from scripts.bench_engine import worker; "
            f"worker({str(model)!r}, {levels!r}, {query!r}, {str(out)!r})")
    # A file, so `if __name__ == "__main__"` guards the spawned engine core.
    script = out.with_suffix(".py")
    script.write_text(f"if __name__ == '__main__':\n    {code}\n")
    subprocess.run([sys.executable, str(script)], env=env, cwd=REPO, check=True, timeout=900,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result: list[dict[str, object]] = json.loads(out.read_text())
    return result


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    work = Path(tempfile.mkdtemp(prefix="vllm-audit-bench-"))
    model = make_tiny_model(REPO / ".cache" / "tiny-llama")
    t0 = time.monotonic()
    baseline = run_worker(model, ["disabled"] * rounds, procs.base_env(), "",
                          work / "disabled.json")
    sock = work / "ingest.sock"
    agent, query, _ = procs.start_agent(work, sock, None, level="off")
    try:
        env = procs.base_env(VLLM_AUDIT_ENABLED="true", VLLM_AUDIT_AGENT_ADDRESS=str(sock),
                             VLLM_AUDIT_LEVEL="off",
                             VLLM_AUDIT_DATA_DIR=str(work / "agent-data"))  # its admin.token
        # Rotated each round, so no level always runs first after a switch.
        order = [LEVELS[(i + r) % len(LEVELS)] for r in range(rounds) for i in range(len(LEVELS))]
        enabled = run_worker(model, order, env, query, work / "enabled.json")
    finally:
        agent.stop()
        shutil.rmtree(work, ignore_errors=True)

    def values(rows: list[dict[str, object]], level: str) -> list[float]:
        return [float(str(r["tokens_per_s"])) for r in rows if r["level"] == level]

    def median(rows: list[dict[str, object]], level: str) -> float:
        return statistics.median(values(rows, level))

    def spread(rows: list[dict[str, object]], level: str) -> str:
        v = values(rows, level)
        return f"{min(v):.0f}-{max(v):.0f}"

    disabled = median(baseline, "disabled")
    off = median(enabled, "off")
    targets = {"off": "", "summary": "<= 1%", "full": "<= 5%", "full-with-allowed-sets": "<= 15%"}
    print(f"{REQUESTS} requests x {MAX_TOKENS} tokens, JSON schema, {rounds} rounds per level "
          f"({os.cpu_count()} cores, {time.monotonic() - t0:.0f} s)")
    print(f"{'level':<24} {'tokens/s':>9} {'rounds':>13} {'vs off':>8} {'vs disabled':>12}  target")
    print(f"{'hook disabled':<24} {disabled:>9.0f} {spread(baseline, 'disabled'):>13}")
    for level in LEVELS:
        value = median(enabled, level)
        print(f"{level:<24} {value:>9.0f} {spread(enabled, level):>13} "
              f"{100 * (1 - value / off):>7.1f}% {100 * (1 - value / disabled):>11.1f}%  "
              f"{targets[level]}")


if __name__ == "__main__":
    main()
