"""/readyz answers with every condition and fails on the ones the operator requires.
Real agent, real HTTP scrapes, a real tmpfs that fills for the disk condition."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from tests.support.agent_harness import Hook, agent, lifecycle
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.config import AgentConfig, parse_required
from vllm_audit_agent.server import AgentHandle


async def readyz(handle: AgentHandle) -> tuple[int, str]:
    host, port = handle.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


def test_unknown_conditions_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="kafka_up"):
        parse_required("wal_writable,kafka_up")
    with pytest.raises(ValueError, match="kafka_up"):
        AgentConfig.from_env({"VLLM_AUDIT_READY_REQUIRES": "kafka_up"})


async def test_kafka_down_is_informational_unless_required(tmp_path: Path) -> None:
    unreachable = "127.0.0.1:9"  # nothing listens: the publisher never connects
    async with agent(tmp_path / "a", kafka_bootstrap=unreachable) as (handle, _):
        status, body = await readyz(handle)
        assert status == 200 and "kafka_connected: failing (informational)" in body
    async with agent(tmp_path / "b", kafka_bootstrap=unreachable,
                     ready_requires=("wal_writable", "kafka_connected")) as (handle, _):
        status, body = await readyz(handle)
        assert status == 503 and "kafka_connected: failing (required)" in body


def mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False).returncode == 0


def fill(path: Path) -> None:
    """Writes until the file system says it is full."""
    with open(path, "wb", buffering=0) as f:  # unbuffered: close() has nothing left to fail
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


async def test_a_disk_that_refuses_appends_makes_the_agent_unready(tmp_path: Path) -> None:
    data = tmp_path / "data"
    if not await asyncio.to_thread(mount_tmpfs, data, "512k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        async with agent(tmp_path, data_dir=data) as (handle, _), \
                Hook(handle.state.config.ingest_socket) as hook:
            assert (await readyz(handle))[0] == 200
            filler = data / "filler"
            await asyncio.to_thread(fill, filler)
            big = "x" * 8192
            reply = await hook.send(1, pb.Event(time_unix_nano=1, request_id="r", http=pb.HttpRequest(
                status_code=200, prompt=big)))
            assert reply.ack.refused and reply.ack.refusal == 2  # REFUSAL_REASON_DISK_FULL
            status, body = await readyz(handle)
            assert status == 503 and "wal_writable: failing (required)" in body
            filler.unlink()
            reply = await hook.send(1, lifecycle("0-1a2b3c4d", pb.LIFECYCLE_PHASE_FINISHED, 1))
            assert not reply.ack.refused
            assert (await readyz(handle))[0] == 200
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(data)], check=False)
