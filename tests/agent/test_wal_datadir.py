"""One agent per data directory, owner-only files: real flocks, real processes, a real agent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.agent_harness import Hook, agent, agent_config, lifecycle
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.server import running_agent
from vllm_audit_agent.storage.datadir import DataDirLock, DataDirLocked, private_dir, write_private_file


def test_a_second_lock_in_this_process_is_refused_until_the_first_is_released(
    tmp_path: Path,
) -> None:
    with DataDirLock(tmp_path / "data") as first:
        with pytest.raises(DataDirLocked) as refused, DataDirLock(tmp_path / "data"):
            pass
        assert str(refused.value) == (
            f"data directory {tmp_path / 'data'} is locked by another agent "
            f"(pid {os.getpid()}, {tmp_path / 'data' / 'LOCK'}); run one agent per data directory")
        assert first.held
    with DataDirLock(tmp_path / "data") as again:  # released: free again
        assert again.held
    assert (tmp_path / "data" / "LOCK").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700


def test_a_lock_held_by_another_process_names_it_and_dies_with_it(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from pathlib import Path
            from vllm_audit_agent.storage.datadir import DataDirLock
            with DataDirLock(Path({str(tmp_path / "data")!r})):
                print("locked", flush=True)
                sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(DataDirLocked, match=f"locked by another agent \\(pid {holder.pid},"):
            DataDirLock(tmp_path / "data").acquire()
        holder.kill()  # a crash: the kernel drops the lock, nothing stale is left behind
        holder.wait(timeout=30)
        with DataDirLock(tmp_path / "data") as lock:
            assert lock.held
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)


async def test_a_second_agent_on_the_same_directory_fails_to_start(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _), Hook(handle.state.config.ingest_socket) as hook:
        # In this process: refused before it opens the WAL.
        with pytest.raises(DataDirLocked, match=f"pid {os.getpid()}"):
            async with running_agent(agent_config(tmp_path / "second", data_dir=tmp_path / "data")):
                pass
        # As a process (the CLI): exits with the message, rc 1.
        second = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "vllm_audit_agent.cli", "agent", "--data-dir", str(tmp_path / "data"),
             "--ingest-socket", str(tmp_path / "second.sock"), "--query-address", "127.0.0.1:0",
             "--http-address", "127.0.0.1:0", "--gpu", "none"],
            capture_output=True, text=True, timeout=60)  # (the first agent keeps serving)
        assert second.returncode == 1
        assert (f"vllm-audit: agent cannot start: data directory {tmp_path / 'data'} is locked "
                f"by another agent (pid {os.getpid()},") in second.stderr
        # The first agent is untouched: it still stores and acks.
        reply = await hook.send(1, lifecycle("0-10ck0000", pb.LIFECYCLE_PHASE_FINISHED, 10**15,
                                             finish_reason="stop"))
        assert not reply.ack.refused
        assert handle.state.wal.segments() == [1] and handle.state.wal.size > 0
    # Stopped: the directory is free for the next agent.
    async with agent(tmp_path) as (handle, _):
        assert handle.state.counters["wal_replayed_batches"] == 1


def test_private_paths_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        (tmp_path / "open").mkdir(mode=0o777)
        directory = private_dir(tmp_path / "open")  # tightened
        nested = private_dir(tmp_path / "new" / "deeper")
        write_private_file(directory / "f", b"secret")
        (directory / "g").write_bytes(b"old")
        os.chmod(directory / "g", 0o666)
        write_private_file(directory / "g", b"new")  # replaced, owner-only
    finally:
        os.umask(old)
    assert [p.stat().st_mode & 0o777 for p in (directory, nested)] == [0o700, 0o700]
    assert [(directory / n).stat().st_mode & 0o777 for n in ("f", "g")] == [0o600, 0o600]
    assert (directory / "g").read_bytes() == b"new"
    assert sorted(p.name for p in directory.iterdir()) == ["f", "g"]  # no temp file left
