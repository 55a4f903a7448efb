"""A watch is on record before it sends anything: its "open" access record is durable before the
first trail goes out, so an agent killed mid-watch (SIGKILL: no close record can be written)
still leaves it, and `verify` passes. Real agents (a process for the crash), real gRPC, the
real CLI's verify and export; a real full tmpfs holds the record log back for the ordering.
(The management API has no HTTP watch: its only stream, export, is recorded when it ends.)"""

from __future__ import annotations

import asyncio
import errno
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from harness import procs
from tests.agent.test_ingest_disk_full import tmpfs
from tests.support.agent_harness import Hook, agent, query, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit.v1 import query_pb2_grpc
from vllm_audit_agent.api import auth_interceptor
from vllm_audit_agent.cli.client import aio_channel

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def watch_records(data: Path, out: Path) -> list[dict[str, Any]]:
    """The WatchTrails access records of a stopped agent's record log, through the CLI."""
    done = cli("export", "--data-dir", str(data), "--format", "jsonl", "--output-file", str(out))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return [r for r in records if r.get("type") == "access" and r["method"] == "WatchTrails"]


def final_trail(i: int) -> pb.Event:
    # A 4xx response makes the trail final at once (no engine half expected).
    return pb.Event(time_unix_nano=10**15 + i, request_id=f"r{i}",
                    http=pb.HttpRequest(tenant="acme", user=f"u{i}", model="m", status_code=403))


async def test_a_crash_mid_watch_leaves_the_open_record(tmp_path: Path) -> None:
    socket = tmp_path / "ingest.sock"
    proc, address, _ = procs.start_agent(tmp_path, socket, None, level="summary")
    try:
        channel = aio_channel(address, procs.admin_token(tmp_path))
        stub = query_pb2_grpc.QueryServiceStub(channel)
        async with Hook(socket) as hook:
            await hook.send(1, final_trail(0))

        async def listed() -> bool:
            return bool((await stub.ListTrails(q.ListTrailsRequest())).trails)

        for _ in range(300):  # bounded: 30 s
            if await listed():
                break
            await asyncio.sleep(0.1)
        watch = stub.WatchTrails(q.WatchTrailsRequest(replay=True))
        first = await asyncio.wait_for(watch.read(), 30)
        assert first.trail.request_id == "r0"
        # The first trail arrived: the open record is durable by now. A crash, at once.
        proc.kill()
        await channel.close()
    finally:
        proc.kill()
    data = tmp_path / "agent-data"
    verified = cli("verify", str(data / "records"), "--public-key", str(next(data.glob("*.pub"))),
                   "--allow-unsigned-tail")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    watches = watch_records(data, tmp_path / "export.jsonl")
    assert len(watches) == 1, watches  # the open record, and no close record
    assert watches[0]["outcome"] == "open" and watches[0]["status"] == "STREAMING"
    assert watches[0]["transport"] == "grpc" and watches[0]["peer"].startswith("ipv4:127.0.0.1")
    assert watches[0]["request"] == {"replay": True}


def fill(disk: Path) -> None:
    """Writes ballast until the file system refuses even one more byte."""
    with open(disk / "ballast", "wb", buffering=0) as ballast:
        for size in (64 << 10, 4 << 10, 1):
            try:
                while True:
                    ballast.write(bytes(size))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc


async def test_a_watch_sends_nothing_before_its_open_record_is_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_interceptor, "OPEN_RECORD_SECONDS", 2.0)
    with tmpfs(tmp_path / "disk", "2m") as disk:
        async with agent(tmp_path, data_dir=disk / "data") as (handle, _), \
                Hook(tmp_path / "ingest.sock") as hook:
            records = handle.state.records
            await hook.send(1, final_trail(0))
            index = handle.index
            assert index is not None
            await until(lambda: len(index) > index.active_count(), "a final trail")
            fill(disk)
            # Records the log can no longer write: what the queue holds stays queued.
            stub = query(handle)
            for _ in range(200):
                await stub.GetStats(q.StatsRequest())
                if records.counters["refused_disk_full"]:
                    break
            assert records.counters["refused_disk_full"], records.counters
            # A watch whose open record is only queued sends no trail: it is refused.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for reply in stub.WatchTrails(q.WatchTrailsRequest(replay=True)):
                    pytest.fail(f"a trail was sent before the open record was durable: {reply}")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "access record" in (refused.value.details() or "")
            # Room again: the queued records are written, and a watch streams.
            (disk / "ballast").unlink()
            await until(lambda: records.pending == 0, "queued records written")
            watch = stub.WatchTrails(q.WatchTrailsRequest(replay=True))
            assert (await asyncio.wait_for(watch.read(), 30)).trail.request_id == "r0"
            watch.cancel()
        watches = watch_records(disk / "data", tmp_path / "export.jsonl")
    # The refused watch: opened, then closed UNAVAILABLE having sent nothing.
    assert [(w["status"], w["result_count"]) for w in watches[:2]] == [
        ("STREAMING", 0), ("UNAVAILABLE", 0)], watches
