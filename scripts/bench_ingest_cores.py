"""The agent's served requests/s per core at level summary, and where that core's time goes.

    .venv/bin/python scripts/bench_ingest_cores.py [ROUNDS]

Drives the benchmarks' `bench_ingest(served=True)`: level-summary trails (5 engine events and
the HTTP half per request) through a real gRPC stream into the WAL, the trail store and the
record log, in this process. Prints requests/s by the wall clock and per CPU-second (the
one-core figure; it includes the client's side of the stream), then a cProfile of one round
grouped by the agent's rooms, so the limit (ingest, trail store, record writer) is named.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks import bench_ingest

#: Events per served request at level summary (benchmarks.ingest_batches).
EVENTS_PER_REQUEST = 6


def rooms(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Own (tottime) seconds by the agent's room, the rest by module family."""
    by_room: Counter[str] = Counter()
    # pstats keeps its table in an attribute its stubs do not declare.
    table = getattr(stats, "stats")  # noqa: B009
    for (path, _, _), (_, _, tottime, _, _) in table.items():
        if "vllm_audit_agent/" in path:
            part = path.split("vllm_audit_agent/")[1].split("/")[0].removesuffix(".py")
            by_room[f"agent.{part}"] += tottime
        elif "grpc" in path:
            by_room["grpc"] += tottime
        elif "asyncio" in path:
            by_room["asyncio"] += tottime
        elif "protobuf" in path or path.startswith("~"):
            by_room["protobuf / builtins"] += tottime
        else:
            by_room[f"other: {Path(path).name}"] += tottime
    total = sum(by_room.values()) or 1.0
    return [(room, seconds / total) for room, seconds in by_room.most_common(14)]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    results = [asyncio.run(bench_ingest(steps=0, served=True)) for _ in range(rounds)]
    wall = statistics.median(r[0] for r in results) / EVENTS_PER_REQUEST
    cpu = statistics.median(r[1] for r in results) / EVENTS_PER_REQUEST
    print(f"agent, level summary, served (records written): {wall:,.0f} requests/s, "
          f"{cpu:,.0f} requests per CPU-second (median of {rounds})")
    profile = cProfile.Profile()
    profile.enable()
    asyncio.run(bench_ingest(steps=0, served=True))
    profile.disable()
    print("  where one core's time goes (own time, one profiled round):")
    for room, share in rooms(pstats.Stats(profile)):
        print(f"    {room:<28} {100 * share:5.1f}%")


if __name__ == "__main__":
    main()
