"""Issue 23's figures in one run on one machine, as the README's table of them.

    .venv/bin/python scripts/bench_performance.py [--records N] [--rounds N] [--write-readme]

One after the other, in this process (about ten minutes on two cores with the defaults):
- the hook's share of a 20 ms engine step per level, 256 rows at a 128k vocabulary
  (bench_hook_step.py: A/B against the same loop without the hook, interleaved rounds);
- the record log: bytes per summary record at rest, `verify` and `export` records per
  CPU-second over a real 100k-record log (bench_record_log.py), and the restart with
  --records records on disk (10M by default), clean and after an outage;
- the agent's served requests per CPU-second at level summary (bench_ingest_cores.py's
  measure: trails through a real gRPC stream into the WAL, the trail store and the record log).

It prints a Markdown table; --write-readme puts it between `<!-- performance:begin -->` and
`<!-- performance:end -->` in README.md, so the README's figures are this run's, not a
collage.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_hook_step
import bench_record_log
from bench_ingest_cores import EVENTS_PER_REQUEST
from benchmarks import bench_ingest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- performance:begin -->\n).*?(<!-- performance:end -->)", re.S)
Row = tuple[str, str, str]


def hook_rows(rounds: int) -> list[Row]:
    results = bench_hook_step.run(rounds)
    rows = []
    for level, target in bench_hook_step.TARGETS.items():
        us = results[level]["ab_us"]
        share = us / bench_hook_step.STEP_BUDGET_US
        rows.append((f"hook's share of a 20 ms step, {level} (256 rows x 128k vocabulary)",
                     f"{us:.0f} us/step, {share:.2%} (IQR {results[level]['ab_iqr']:.0f} us)",
                     f"<= {target:.1%} {'met' if share <= target else 'MISSED'}"))
    return rows


def agent_rows(rounds: int) -> list[Row]:
    results = [asyncio.run(bench_ingest(steps=0, served=True)) for _ in range(rounds)]
    wall = statistics.median(r[0] for r in results) / EVENTS_PER_REQUEST
    cpu = statistics.median(r[1] for r in results) / EVENTS_PER_REQUEST
    return [("agent, served requests at level summary (records written), median of "
             f"{rounds}", f"{cpu:,.0f} per CPU-second ({wall:,.0f}/s wall)",
             "~10k/s on one core before")]


def table(rows: list[Row], seconds: float) -> str:
    lines = [f"One run of `scripts/bench_performance.py` ({time.strftime('%Y-%m-%d')}, "
             f"Python {platform.python_version()}, {seconds / 60:.0f} min):", "",
             "| figure | measured | target |", "|---|---|---|"]
    lines += [f"| {name.strip()} | {value} | {target} |" for name, value, target in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Issue 23's figures in one run.")
    parser.add_argument("--records", type=int, default=10_000_000,
                        help="records on disk for the restart (default 10M)")
    parser.add_argument("--rounds", type=int, default=15,
                        help="interleaved rounds of the hook's step benchmark")
    parser.add_argument("--write-readme", action="store_true",
                        help="put the table into README.md's performance block")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    rows = hook_rows(args.rounds)
    rows += bench_record_log.bench_real_log()
    rows += bench_record_log.bench_restart(args.records)
    rows += agent_rows(3)
    text = table(rows, time.perf_counter() - t0)
    print(text)
    if args.write_readme:
        readme = README.read_text()
        if not BLOCK.search(readme):
            sys.exit("README.md has no <!-- performance:begin/end --> block")
        README.write_text(BLOCK.sub(lambda m: m.group(1) + text + m.group(2), readme))
        print(f"written to {README}")


if __name__ == "__main__":
    main(sys.argv[1:])
