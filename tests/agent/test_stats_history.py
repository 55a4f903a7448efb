"""The engine-stats time series: kept on the agent's disk, exported by `vllm-audit stats export`
as CSV or JSONL from that history or from the Kafka stream."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from harness.kafka_broker import KafkaBroker
from tests.support.agent_harness import Hook, agent, agent_config, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.delivery.kafka_sink import KafkaPublisher
from vllm_audit_agent.server import running_agent
from vllm_audit_agent.telemetry.stats_history import (
    CURRENT,
    HISTORY_DIR,
    PREVIOUS,
    StatsHistory,
    read_history,
)

REPO = Path(__file__).resolve().parents[2]
T0_NS = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z


def stats(index: int, running: int, at_s: float) -> pb.Event:
    return pb.Event(time_unix_nano=T0_NS + int(at_s * 1e9), engine_stats=pb.EngineStats(
        engine_index=index, num_running_reqs=running, ttft_seconds_sum=0.25 * running,
        ttft_count=running))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


INTERVAL_S = 0.2  # --engine-stats-interval: one snapshot per engine per interval


async def send_series(handle_socket: Path, rounds: int) -> None:
    """Two data-parallel engines, one snapshot each per publish interval, plus one of engine 0
    sent within the interval (published when the interval ends, the next one after it)."""
    async with Hook(handle_socket, source="host:1:1") as hook:
        for n in range(rounds):
            await hook.send(2 * n + 1, stats(0, n, n), stats(1, 10 + n, n), model="m", pid=7)
            await hook.send(2 * n + 2, stats(0, 99, n + 0.5), model="m", pid=7)
            if n + 1 < rounds:
                await asyncio.sleep(INTERVAL_S * 2.5)


async def test_the_agent_keeps_the_series_and_the_cli_exports_it_as_csv(tmp_path: Path) -> None:
    async with agent(tmp_path, engine_stats_interval_seconds=INTERVAL_S) as (handle, _):
        await send_series(handle.state.config.ingest_socket, rounds=3)
        history = handle.state.stats_history.counters
        await until(lambda: history["snapshots_written"] == 9, "the last snapshot written")
        assert history["write_errors"] == 0
        data_dir = handle.state.config.data_dir

    out = await asyncio.to_thread(cli, "stats", "export", "--data-dir", str(data_dir))
    assert out.returncode == 0, out.stderr
    assert "9 snapshots" in out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert list(rows[0])[:4] == ["timestamp_ms", "source_id", "model", "engine_index"]
    series = sorted((int(r["engine_index"]), int(r["timestamp_ms"]), int(r["num_running_reqs"]))
                    for r in rows)
    t0 = T0_NS // 10**6
    assert series == [(0, t0, 0), (0, t0 + 500, 99), (0, t0 + 1000, 1), (0, t0 + 1500, 99),
                      (0, t0 + 2000, 2), (0, t0 + 2500, 99),
                      (1, t0, 10), (1, t0 + 1000, 11), (1, t0 + 2000, 12)]
    assert {r["source_id"] for r in rows} == {"host:1:1"} and {r["model"] for r in rows} == {"m"}

    # A time range: only the middle second, as JSONL.
    out = await asyncio.to_thread(
        cli, "stats", "export", "--data-dir", str(data_dir), "--format", "jsonl",
        "--since", str(t0 + 1000), "--until", "2023-11-14T22:13:22Z")
    assert out.returncode == 0, out.stderr
    lines = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert sorted((r["engine_index"], r["num_running_reqs"]) for r in lines) == [
        (0, 1), (0, 99), (1, 11)]


async def test_the_last_snapshot_of_every_burst_is_written(tmp_path: Path) -> None:
    """A burst of snapshots within one interval: the first goes out at once, the last when
    the interval ends (or at shutdown). Only the first was written before, so an export
    ended short of what vLLM said (236 finished requests of 260)."""
    async with agent(tmp_path, engine_stats_interval_seconds=0.3) as (handle, _), \
            Hook(handle.state.config.ingest_socket, source="host:1:1") as hook:
        history = handle.state.stats_history.counters
        for n in range(1, 6):
            await hook.send(n, stats(0, n, n / 100), model="m", pid=7)
        await until(lambda: history["snapshots_written"] == 2, "the burst's last snapshot")
        await asyncio.sleep(0.5)
        for n in range(6, 9):  # a second burst, the agent stopping within its interval
            await hook.send(n, stats(0, n, 1 + n / 100), model="m", pid=7)
        data_dir = handle.state.config.data_dir
    assert [r["num_running_reqs"] for r in read_history(data_dir)] == [1, 5, 6, 8]


async def test_history_metrics_are_exported_from_zero(tmp_path: Path) -> None:
    import httpx

    async with agent(tmp_path) as (handle, _):
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://{handle.http_address}/metrics")).text
        assert 'vllm_audit_stats_history_snapshots_total{outcome="written"} 0.0' in text
        assert 'vllm_audit_stats_history_snapshots_total{outcome="write_error"} 0.0' in text


def test_the_history_stays_within_its_budget_and_keeps_the_newest(tmp_path: Path) -> None:
    history = StatsHistory(tmp_path, max_bytes=4096)
    for n in range(500):
        history.append({"timestamp_ms": n, "source_id": "s", "engine_index": 0, "pad": "x" * 20})
    history.close()
    files = [tmp_path / HISTORY_DIR / name for name in (PREVIOUS, CURRENT)]
    assert sum(f.stat().st_size for f in files) <= 4096
    kept = [r["timestamp_ms"] for r in read_history(tmp_path)]
    assert kept == list(range(500 - len(kept), 500))  # contiguous, newest last
    assert history.counters["rotations"] > 0
    assert oct(files[1].stat().st_mode & 0o777) == "0o600"


def test_a_torn_tail_is_skipped_and_counted(tmp_path: Path) -> None:
    history = StatsHistory(tmp_path)
    for n in range(3):
        history.append({"timestamp_ms": n})
    history.close()
    with (tmp_path / HISTORY_DIR / CURRENT).open("ab") as f:
        f.write(b'{"timestamp_ms": 3, "num_runn')  # a crash mid-line
    skipped: Counter[str] = Counter()
    assert [r["timestamp_ms"] for r in read_history(tmp_path, skipped)] == [0, 1, 2]
    assert skipped["unreadable_lines"] == 1


def test_a_write_error_is_counted_not_raised(tmp_path: Path) -> None:
    (tmp_path / HISTORY_DIR).write_text("a file where the directory should be")
    history = StatsHistory(tmp_path)
    history.append({"timestamp_ms": 1})
    history.append({"timestamp_ms": 2})
    assert history.counters["write_errors"] == 2 and history.counters["snapshots_written"] == 0


def test_no_history_says_why(tmp_path: Path) -> None:
    out = cli("stats", "export", "--data-dir", str(tmp_path))
    assert out.returncode != 0
    assert "engine-stats" in out.stderr and "--stats-history-bytes" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.fixture
async def broker() -> AsyncIterator[KafkaBroker]:
    broker = KafkaBroker()
    await asyncio.to_thread(broker.__enter__)
    try:
        yield broker
    finally:
        await asyncio.to_thread(broker.__exit__, None, None, None)


@pytest.mark.kafka
async def test_the_cli_exports_the_kafka_stream_too(broker: KafkaBroker, tmp_path: Path) -> None:
    config = agent_config(tmp_path, kafka_bootstrap=broker.bootstrap, stats_history_bytes=0,
                          engine_stats_interval_seconds=INTERVAL_S)
    publisher = KafkaPublisher(broker.bootstrap, config.kafka_topic_prefix, max_backoff=0.5)
    async with running_agent(config, publisher=publisher) as handle:
        assert not handle.state.stats_history.enabled
        await send_series(config.ingest_socket, rounds=2)
        await until(lambda: publisher.counters["stats_published"] == 6, "stats published")

    out = await asyncio.to_thread(cli, "stats", "export", "--kafka-bootstrap",
                                  broker.bootstrap, "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    rows = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert sorted((r["engine_index"], r["num_running_reqs"]) for r in rows) == [
        (0, 0), (0, 1), (0, 99), (0, 99), (1, 10), (1, 11)]
    assert not (tmp_path / "data" / HISTORY_DIR).exists()


def test_an_unreachable_broker_is_one_line_not_a_traceback() -> None:
    out = cli("stats", "export", "--kafka-bootstrap", "127.0.0.1:1")
    assert out.returncode == 1
    assert "Kafka at 127.0.0.1:1 cannot be reached" in out.stderr
    assert "Traceback" not in out.stderr
