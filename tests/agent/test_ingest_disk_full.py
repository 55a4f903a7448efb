"""A full disk under the real agent: a small real tmpfs as its data directory. Each batch the
WAL cannot store is refused with REFUSAL_REASON_DISK_FULL (the hook keeps it), ingest reports
unhealthy until an append succeeds again, and every acknowledged batch survives a restart."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.test_agent import scrape
from tests.support.agent_harness import Hook, agent, query
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, query_pb2


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    directory.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(directory)], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root / CAP_SYS_ADMIN): {exc}")
    try:
        yield directory
    finally:
        # Lazy: a file still open (a failed run) must not leave the mount behind.
        subprocess.run(["umount", "-l", str(directory)], check=True, timeout=30)


def event(i: int) -> pb.Event:
    return pb.Event(time_unix_nano=10**18, request_id=f"{i}-disk0000",
                    http=pb.HttpRequest(status_code=500, prompt="x" * 4000))


async def test_a_full_disk_refuses_batches_with_a_reason_until_space_is_freed(
        tmp_path: Path) -> None:
    # The record log shares the disk: what it could not write while full takes its share of
    # the freed space first, so the ballast frees room for that backlog and then some.
    with tmpfs(tmp_path / "disk", "512k") as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(bytes(192 << 10))
        acked: list[int] = []
        async with agent(tmp_path, data_dir=disk / "data") as (handle, _), \
                Hook(tmp_path / "ingest.sock") as hook:
            state = handle.state
            for seq in range(1, 300):
                reply = await hook.send(seq, event(seq))
                if reply.ack.refused:
                    break
                acked.append(seq)
            else:
                pytest.fail("a 512 KiB tmpfs took 200 batches of 4 KiB")
            assert reply.ack.refusal == ingest_pb2.REFUSAL_REASON_DISK_FULL
            assert reply.ack.reason.startswith("disk_full: ")
            # Still full: sent again (the hook keeps it), refused again. The agent's own
            # work may free a little room between two sends (sealing compresses a finished
            # record-log segment): a batch it then takes is acknowledged, the next one sent.
            for _ in range(50):
                again = await hook.send(seq, event(seq))
                if again.ack.refused:
                    break
                acked.append(seq)
                seq += 1
            else:
                pytest.fail("the disk never filled again")
            assert again.ack.refusal == ingest_pb2.REFUSAL_REASON_DISK_FULL
            assert state.refused_by_reason()["disk_full"] == 2
            assert not state.ingest_healthy
            assert (await scrape(handle, "/readyz"))[0] == 503
            ballast.unlink()  # the operator frees space
            for s in range(seq, seq + 5):
                reply = await hook.send(s, event(s))
                for _ in range(40):  # as the hook does: a retriable refusal is sent again
                    if not reply.ack.refused:
                        break
                    assert reply.ack.refusal == ingest_pb2.REFUSAL_REASON_DISK_FULL
                    await asyncio.sleep(0.05)
                    reply = await hook.send(s, event(s))
                assert not reply.ack.refused and not reply.ack.duplicate
                acked.append(s)
            assert state.ingest_healthy
            assert (await scrape(handle, "/readyz"))[0] == 200
        async with agent(tmp_path, data_dir=disk / "data") as (handle, _):
            assert handle.state.counters["wal_replayed_batches"] == len(acked)
            stats = await query(handle).GetStats(query_pb2.StatsRequest())
            assert stats.batches_ingested == len(acked)
