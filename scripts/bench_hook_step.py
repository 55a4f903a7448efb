"""The hook's per-step cost on a synthetic batch: 256 rows at a 128k vocabulary.

    .venv/bin/python scripts/bench_hook_step.py [ROUNDS] [--before GIT_REF]

The hook's real per-step code — the adapter's `grammar_bitmask` wrapper (from level key-events
on one copy of the bitmask per engine step, handed to the sender), the grammar proxy's
`fill_bitmask` per row and `accept_tokens` per accepted token (one tuple per request step) —
is driven by a stand-in for vLLM's StructuredOutputManager whose grammars do nothing, so what
is measured is the hook alone. Engine steps are those of a steady decode: every request
takes one token per step (additions and finishes, once per request, are not in it). What the
engine thread hands over is then converted as the sender thread does (popcount, columns,
allowed sets), outside the engine's clock: its time is the "sender us/step" column.

`--before GIT_REF` first runs the same benchmark on the hook as it was at GIT_REF (its
vllm_hooks/ and this script, from `git archive`, in a process of its own), so one run prints
the figures before and after a change; the two run one after the other, not interleaved.

Two measurements per level, interleaved round by round so drift hits all alike:
- A/B: µs per step with the hook installed at that level minus the same loop with nothing
  installed (medians over rounds; the spread is the interquartile range of the difference);
- self-timed: VLLM_AUDIT_SELF_TIMING's own figure (`hook_ns` per step), as the engine would
  report it, with what its own clock adds per timed call.

Targets, as shares of a 20 ms step (issue 23): summary <= 0.5%, key events <= 1%, full <= 1.5%,
full with allowed sets <= 3%.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllm_hooks.config.levels import Level
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.events.capture import CapturePolicy
from vllm_hooks.events.raw_events import EventConverter
from vllm_hooks.events.self_timing import SelfTimer
from vllm_hooks.runtime import HookRuntime
from vllm_hooks.vllm.grammar_tap import BitmaskTap
from vllm_hooks.vllm.scheduler_patch import wrap_scheduler
from vllm_hooks.vllm.structured_output_patch import wrap_structured_output_manager

ROWS, VOCAB = 256, 128_256
STEP_BUDGET_US = 20_000.0
LEVELS = ("off", "summary", "key-events", "full", "full-with-allowed-sets")
#: Share of a 20 ms step each level may cost (issue 23's targets).
TARGETS = {"summary": 0.005, "key-events": 0.01, "full": 0.015, "full-with-allowed-sets": 0.03}
STEPS_PER_ROUND = 20


class NullGrammar:
    """A backend grammar that does nothing: its cost is vLLM's, not the hook's."""

    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        return True

    def validate_tokens(self, tokens: list[int]) -> list[int]:
        return tokens

    def rollback(self, num_tokens: int) -> None:
        pass

    def fill_bitmask(self, bitmask: Any, batch_index: int) -> None:
        pass

    def is_terminated(self) -> bool:
        return False

    def reset(self) -> None:
        pass


class StandInManager:
    """vLLM's StructuredOutputManager as far as the hook sees it: one bitmask array, kept in
    `_grammar_bitmask` and refilled each step (the hook may hand it another one to fill)."""

    def __init__(self, bitmask: npt.NDArray[np.int32]) -> None:
        self._grammar_bitmask = bitmask.copy()

    def _create_grammar(self, request: Any) -> Any:
        return NullGrammar()

    def grammar_bitmask(self, requests: dict[str, Any], ids: list[str],
                        spec_tokens: dict[str, list[int]]) -> npt.NDArray[np.int32]:
        bitmask = self._grammar_bitmask
        for index, rid in enumerate(ids):  # as vLLM: one fill per row
            requests[rid].structured_output_request._grammar.fill_bitmask(bitmask, index)
        return bitmask[:len(ids)]


def make_requests(manager: StandInManager) -> tuple[dict[str, Any], list[str]]:
    requests, ids = {}, []
    for i in range(ROWS):
        rid = f"chatcmpl-{i:032x}-1a2b3c4d"
        so = SimpleNamespace(structured_output_key=(SimpleNamespace(name="JSON"), "{}"),
                             _grammar=None)
        request = SimpleNamespace(
            request_id=rid, structured_output_request=so,
            sampling_params=SimpleNamespace(structured_outputs=SimpleNamespace(
                _backend="xgrammar")))
        so._grammar = manager._create_grammar(request)
        requests[rid] = request
        ids.append(rid)
    return requests, ids


class Engine:
    """One configuration: the stand-in manager, with or without the hook, at one level."""

    def __init__(self, bitmask: npt.NDArray[np.int32], level: str | None,
                 timer: SelfTimer | None = None) -> None:
        self.manager = StandInManager(bitmask)
        self.runtime: HookRuntime | None = None
        if level is not None:
            rt = HookRuntime(HookSettings(enabled=True, level=Level.parse(level),
                                          buffer_events=1 << 20), "bench")
            rt.timer = timer
            wrap_structured_output_manager(self.manager, BitmaskTap(rt, VOCAB))
            self.runtime = rt
            self.converter = EventConverter(rt.settings, CapturePolicy(b"bench"))
        self.requests, self.ids = make_requests(self.manager)
        #: Seconds the sender thread's conversion took, summed (outside the engine's clock).
        self.sender_s = 0.0

    def steps(self, n: int) -> float:
        """Seconds for `n` engine steps. The buffer is emptied and converted outside the
        clock, as the sender thread does (its time goes to `sender_s`)."""
        requests, ids, manager = self.requests, self.ids, self.manager
        start = time.perf_counter()
        for _ in range(n):
            manager.grammar_bitmask(requests, ids, {})
            for rid in ids:
                # A list per call, as vLLM hands each (`new_token_ids[start:]`).
                requests[rid].structured_output_request._grammar.accept_tokens(rid, [17])
        elapsed = time.perf_counter() - start
        if self.runtime is not None:
            sender = time.perf_counter()
            convert = self.converter.convert
            for event in self.runtime.buffer.drain(1 << 30):
                convert(event)
            self.sender_s += time.perf_counter() - sender
        return elapsed


def region_overhead_ns(samples: int = 20_000) -> float:
    """What the self-timing clock adds per timed region pair (a hook region around a vLLM
    region around nothing), median of batches."""
    timer = SelfTimer()
    inner = timer.vllm_region(lambda: None)
    outer = timer.hook_region(inner)
    bare = [0.0] * 5
    for k in range(5):
        before = timer.hook_ns
        for _ in range(samples):
            outer()
        bare[k] = (timer.hook_ns - before) / samples
    return statistics.median(bare)


def entry_point_ns(calls: int = 20_000, samples: int = 15) -> dict[str, float]:
    """ns per call of a scheduler entry point (`add_request`) at level off, as the adapter
    installs it: vLLM's bare method, the hook with self-timing off (the wrapper every
    deployment runs: the mode is chosen when wrapping, no flag is read per call) and with it
    on. Medians of `samples` batches."""

    class StandInScheduler:
        vllm_config = SimpleNamespace(model_config=SimpleNamespace(
            served_model_name="bench", model="bench"))
        structured_output_manager = None

        def add_request(self, request: Any) -> None:
            pass

        def schedule(self) -> Any:
            return None

        def _free_request(self, request: Any) -> None:
            pass

    def per_call(fn: Any) -> float:
        out = []
        for _ in range(samples):
            start = time.perf_counter_ns()
            for _ in range(calls):
                fn(None)
            out.append((time.perf_counter_ns() - start) / calls)
        return statistics.median(out)

    figures = {"bare": per_call(StandInScheduler().add_request)}
    for name, timer in (("self-timing off", None), ("self-timing on", SelfTimer())):
        rt = HookRuntime(HookSettings(enabled=True, level=Level.OFF), "bench")
        rt.timer = timer
        sched = StandInScheduler()
        wrap_scheduler(sched, rt)
        figures[name] = per_call(sched.add_request)
    return figures


def iqr(values: list[float]) -> float:
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def run(rounds: int = 15) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    bitmask = rng.integers(-(2**31), 2**31 - 1, size=(ROWS, (VOCAB + 31) // 32), dtype=np.int32)
    engines: dict[str, Engine] = {"none": Engine(bitmask, None)}
    timers: dict[str, SelfTimer] = {}
    for level in LEVELS:
        engines[level] = Engine(bitmask, level)
        timers[level] = SelfTimer()
        engines["timed " + level] = Engine(bitmask, level, timers[level])
    for engine in engines.values():
        engine.steps(3)  # warm-up
    # Counted from here: the warm-up is not in the figures.
    warm = {level: (t.hook_ns, t.hook_calls) for level, t in timers.items()}
    per_step: dict[str, list[float]] = {name: [] for name in engines}
    names = list(engines)
    for r in range(rounds):
        # Rotated each round: no configuration always runs first or after the same one.
        for name in names[r % len(names):] + names[:r % len(names)]:
            per_step[name].append(engines[name].steps(STEPS_PER_ROUND) / STEPS_PER_ROUND * 1e6)
    overhead = region_overhead_ns()
    results: dict[str, dict[str, float]] = {}
    for level in LEVELS:
        diffs = [a - b for a, b in zip(per_step[level], per_step["none"], strict=True)]
        timer = timers[level]
        steps = rounds * STEPS_PER_ROUND
        # Each region pair is one hook call that wrapped vLLM work: its clock is counted once.
        hook_ns, calls = timer.hook_ns - warm[level][0], timer.hook_calls - warm[level][1]
        timed = hook_ns / steps / 1000
        per_call = hook_ns / calls if calls else 0.0
        results[level] = {"ab_us": statistics.median(diffs), "ab_iqr": iqr(diffs),
                          "timed_us": timed, "timed_calls": calls / steps,
                          "timed_ns_per_call": per_call, "clock_overhead_ns": overhead,
                          "baseline_us": statistics.median(per_step["none"]),
                          "sender_us": engines[level].sender_s
                          / (rounds * STEPS_PER_ROUND + 3) * 1e6}
    return results


def verdict(level: str, us: float) -> str:
    target = TARGETS.get(level)
    if target is None:
        return ""
    return f"{'pass' if us / STEP_BUDGET_US <= target else 'MISS'} (<= {target:.1%})"


def report(results: dict[str, dict[str, float]], rounds: int) -> None:
    print(f"synthetic step: {ROWS} rows x {VOCAB} vocabulary, steady decode, {rounds} "
          f"interleaved rounds of {STEPS_PER_ROUND} steps; share of a 20 ms step")
    print(f"  stand-in engine without the hook: "
          f"{results['off']['baseline_us']:.0f} us/step")
    print(f"  {'level':<24} {'A/B us/step':>12} {'IQR':>7} {'us/req-step':>12} "
          f"{'share':>7} {'self-timed':>11} {'calls/step':>10} {'sender us/step':>14}  target")
    for level in LEVELS:
        r = results[level]
        us = r["ab_us"]
        sender = f"{r['sender_us']:>14.0f}" if "sender_us" in r else f"{'-':>14}"
        print(f"  {level:<24} {us:>12.1f} {r['ab_iqr']:>7.1f} {us / ROWS:>12.3f} "
              f"{100 * us / STEP_BUDGET_US:>6.2f}% {r['timed_us']:>11.1f} "
              f"{r['timed_calls']:>10.0f} {sender}  {verdict(level, us)}")
    print(f"  (self-timed: the hook's own figure, an upper bound: each timed call also counts "
          f"about {results['off']['clock_overhead_ns']:.0f} ns of clock reads, a timed region "
          "around a vLLM call measured alone)")


def report_entry_point() -> None:
    f = entry_point_ns()
    print(f"  scheduler entry point at level off: vLLM's bare method {f['bare']:.0f} ns/call, "
          f"with the hook {f['self-timing off']:.0f} ns (self-timing off), "
          f"{f['self-timing on']:.0f} ns (self-timing on)")


def run_before(ref: str, rounds: int) -> None:
    """This benchmark on the hook as it was at git `ref`, in a process of its own (its
    vllm_hooks/ first on the path; the contract, vllm_audit, is today's: a superset)."""
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="vllm-audit-before-") as tmp:
        archive = subprocess.run(["git", "-C", str(repo), "archive", ref, "vllm_hooks",
                                  "scripts/bench_hook_step.py"],
                                 check=True, capture_output=True, timeout=60).stdout
        archive_path = Path(tmp) / "before.tar"
        archive_path.write_bytes(archive)
        with tarfile.open(archive_path) as tar:
            tar.extractall(tmp, filter="data")
        print(f"before: the hook at {ref}")
        env = {**os.environ, "PYTHONPATH": tmp}
        subprocess.run([sys.executable, str(Path(tmp) / "scripts" / "bench_hook_step.py"),
                        str(rounds)], check=True, env=env, cwd=tmp, timeout=1800)
    print("after: the hook in this checkout")


def main() -> None:
    args = sys.argv[1:]
    before = None
    if "--before" in args:
        at = args.index("--before")
        before = args[at + 1]
        del args[at:at + 2]
    rounds = int(args[0]) if args else 15
    if before is not None:
        run_before(before, rounds)
    report(run(rounds), rounds)
    report_entry_point()


if __name__ == "__main__":
    main()
