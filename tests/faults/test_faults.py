"""The fault suite: each fault on real parts, with what it cost in a table row.

Acknowledged and lost is 0 in every case, except where the damaged bytes themselves are gone
(a flipped byte, a zeroed block): there the loss equals what the agent counted as damaged and
the damaged bytes are in its quarantine directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.kafka_broker import KafkaBroker
from tests.faults.harness import AgentProc, FaultRow, Load, kafka_keys, running, until
from tests.support.agent_harness import Hook, agent
from tests.support.agent_harness import until as until_async
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.storage.sealed import read_index

pytestmark = pytest.mark.faults


@pytest.fixture
def broker() -> Iterator[KafkaBroker]:
    with KafkaBroker() as b:
        yield b


def ledger(fault: str, load: Load, stored_ids: list[str], keys: list[str] | None = None,
           note: str = "") -> FaultRow:
    acked = len(load.sent) - load.dropped()
    stored = len(set(stored_ids) & set(load.sent))
    published = None if keys is None else len(set(keys) & set(load.sent))
    reached = stored if keys is None else min(stored, published or 0)
    return FaultRow(fault, len(load.sent), acked, stored, published, acked - reached,
                    None if keys is None else len(keys) - len(set(keys)), note)


def steady(load: Load, stop: threading.Event, per_tick: int = 20) -> threading.Thread:
    """Offers `per_tick` events every 10 ms until `stop` (up to 2k events/s)."""

    def run() -> None:
        while not stop.is_set():
            load.offer(per_tick)
            stop.wait(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigkill_under_load_three_times(tmp_path: Path, broker: KafkaBroker,
                                        fault_table: list[FaultRow]) -> None:
    socket = tmp_path / "ingest.sock"
    agent = AgentProc(tmp_path, tmp_path / "data", socket, kafka=broker.bootstrap)
    with Load(socket) as load, running(agent):
        stop = threading.Event()
        feeder = steady(load, stop)
        for _ in range(3):
            time.sleep(1.5)
            agent.kill(signal.SIGKILL)
            time.sleep(0.3)  # the hook finds no agent: it keeps and buffers
            agent.start()
        time.sleep(1.0)
        stop.set()
        feeder.join()
        assert load.flush(60), "the hook could not deliver what it kept"
        ids = agent.trail_ids()
        keys = kafka_keys(broker.bootstrap, expect=len(load.sent))
    row = ledger("SIGKILL agent under load (x3)", load, ids, keys)
    fault_table.append(row)
    assert load.dropped() == 0
    assert row.lost == 0, row


def test_kafka_down_for_20_seconds(tmp_path: Path, broker: KafkaBroker,
                                   fault_table: list[FaultRow]) -> None:
    socket = tmp_path / "ingest.sock"
    agent = AgentProc(tmp_path, tmp_path / "data", socket, kafka=broker.bootstrap)
    with Load(socket) as load, running(agent):
        load.offer(500)
        assert load.flush(30)
        os.kill(broker.pid, signal.SIGSTOP)  # hung, not gone: the nastier outage
        try:
            stop = threading.Event()
            feeder = steady(load, stop, per_tick=10)
            time.sleep(20)
            stop.set()
            feeder.join()
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        assert load.flush(60)
        ids = agent.trail_ids()
        keys = kafka_keys(broker.bootstrap, expect=len(load.sent))
    row = ledger("Kafka hung 20 s (SIGSTOP)", load, ids, keys)
    fault_table.append(row)
    assert row.lost == 0, row


def _segments(records: Path) -> list[Path]:
    """The record log's segments: sealed (`.wal.zst`, every finished one) and the open one."""
    return sorted(records.glob("ingest-*.wal*"))


def _damage_middle_segment(records: Path, how: str) -> Path:
    segments = _segments(records)
    assert len(segments) >= 3, f"want a middle segment, have {len(segments)}"
    victim = segments[len(segments) // 2]
    blob = bytearray(victim.read_bytes())
    middle = len(blob) // 2
    if how == "flip":
        blob[middle] ^= 0xFF
    else:
        blob[middle:middle + 64] = bytes(64)
    victim.write_bytes(bytes(blob))
    return victim


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    from harness import procs

    return subprocess.run([procs.PYTHON, "-m", "vllm_audit_agent.cli", *args], cwd=procs.REPO,
                          env=procs.base_env(), capture_output=True, text=True, timeout=120,
                          check=False)


def _exported_trail_ids(data: Path, out: Path) -> list[str]:
    done = _cli("export", "--data-dir", str(data), "--format", "jsonl", "--output-file", str(out))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return [str(r["trail_id"]) for r in lines if r.get("type") == "request"]


@pytest.mark.parametrize("how", ["flip", "zero"])
def test_damaged_bytes_in_a_middle_segment(tmp_path: Path, how: str,
                                           fault_table: list[FaultRow]) -> None:
    """Without Kafka the record log is the archive: damage in one of its middle segments is
    seen by `verify`, quarantined and counted at the next start, and every intact record
    after it is kept."""
    socket, data = tmp_path / "ingest.sock", tmp_path / "data"
    records = data / "records"
    # Record-log segments of cap / 16 (~100 KB: several for 400 records, none expired).
    agent = AgentProc(tmp_path, data, socket, "--record-log-max-bytes", "1600000",
                      "--checkpoint-every", "50")
    with Load(socket, batch_events=1) as load:
        with running(agent):
            load.offer(400)
            assert load.flush(60)
            until(lambda: agent.stats().trails_finished >= 400, "every trail recorded")
        victim = _damage_middle_segment(records, how)
        public_key = str(next(data.glob("*.pub")))
        seen = _cli("verify", str(records), "--public-key", public_key)
        with running(agent):  # recovery: the damaged bytes are quarantined and counted
            stats = agent.stats()
        ids = _exported_trail_ids(data, tmp_path / "export.jsonl")
        after = _cli("verify", str(records), "--public-key", public_key)
    damaged = int(stats.agent_dropped_by_reason["record_log_damaged_records"])
    row = ledger("flipped byte in a middle record-log segment" if how == "flip"
                 else "zeroed 64-byte block in a middle record-log segment", load, ids,
                 note=f"verify: exit {seen.returncode}; damaged counted: {damaged} records")
    fault_table.append(row)
    # The alteration is seen and located before any restart...
    assert seen.returncode == 1 and "seq" in seen.stdout + seen.stderr, seen.stdout + seen.stderr
    # ...and afterwards the gap is still named.
    assert after.returncode == 1, after.stdout + after.stderr
    if victim.suffix == ".zst":
        # A finished segment is sealed: zstd frames, each checked as a whole (its CRC and
        # zstd's checksum), so damage can cost the frame's records, not one (a trail whose
        # other revision is elsewhere is not lost); readers skip the frame and count it, and
        # verify names the gap.
        index = read_index(victim)
        assert index is not None, "the damage reached the segment's index"
        per_frame = max(frame.records for frame in index.frames)
        assert 0 <= row.lost <= per_frame, row
        return
    assert 1 <= damaged <= 2
    # Only what the damaged bytes held is gone (a damaged checkpoint loses no trail).
    assert 0 <= row.lost <= damaged, row
    assert list((records / "quarantine").iterdir()), "damaged bytes not quarantined"


def test_poison_pill_batch(tmp_path: Path, fault_table: list[FaultRow]) -> None:
    socket, data = tmp_path / "ingest.sock", tmp_path / "data"
    agent = AgentProc(tmp_path, data, socket)

    async def send_poison() -> list[bool]:
        refused = []
        async with Hook(socket, source="poison") as hook:
            for seq, value in enumerate((float("inf"), float("nan"), 1e300), start=1):
                event = pb.Event(time_unix_nano=time.time_ns(), request_id=f"p{seq}",
                                 http=pb.HttpRequest(status_code=200, latency_ms=value))
                reply = await hook.send(seq, event, epoch=7)
                refused.append(reply.ack.refused)
        return refused

    with Load(socket) as load:
        with running(agent):
            answers = asyncio.run(send_poison())
            load.offer(100)
            assert load.flush(30)
        with running(agent):  # the restart replays whatever was accepted
            ids = agent.trail_ids()
    row = ledger("poison-pill numbers (inf, NaN, 1e300)", load, ids,
                 note=f"pills refused: {sum(answers)}/3, rest clamped")
    fault_table.append(row)
    assert row.lost == 0, row


def test_oversize_batch(tmp_path: Path, fault_table: list[FaultRow]) -> None:
    socket = tmp_path / "ingest.sock"
    agent = AgentProc(tmp_path, tmp_path / "data", socket)
    with running(agent), Load(socket, capture_prompt="full") as load:
        load.offer_http(100, prompt_bytes=50_000)  # ~5 MB: over gRPC's 4 MiB default
        load.offer_http(1, prompt_bytes=6_000_000, prefix="huge")
        assert load.flush(60), "an oversize batch blocked the stream"
        ids = agent.trail_ids()
    row = ledger("oversize batches (100 x 50 KB, 1 x 6 MB)", load, ids)
    fault_table.append(row)
    assert row.lost == 0, row


def test_reused_source_id(tmp_path: Path, fault_table: list[FaultRow]) -> None:
    socket = tmp_path / "ingest.sock"
    agent = AgentProc(tmp_path, tmp_path / "data", socket)
    with running(agent), Load(socket) as first, Load(socket) as second:
        second.sender.source_id = first.sender.source_id  # e.g. pid 1 in two containers
        first.offer(50, prefix="a")
        assert first.flush(30)
        second.offer(50, prefix="b")
        assert second.flush(30)
        ids = agent.trail_ids()
    for load, name in ((first, "first"), (second, "second")):
        row = ledger(f"reused source id ({name} process)", load, ids)
        fault_table.append(row)
        assert row.lost == 0, row


def test_two_agents_on_one_directory(tmp_path: Path, fault_table: list[FaultRow]) -> None:
    data = tmp_path / "data"
    agent = AgentProc(tmp_path, data, tmp_path / "a.sock")
    intruder = AgentProc(tmp_path, data, tmp_path / "b.sock", name="intruder")
    with running(agent), Load(agent.socket) as load:
        load.offer(200)
        proc = intruder.spawn()
        rc = proc.popen.wait(30)
        log = proc.log_tail()
        proc.stop()
        load.offer(200)
        assert load.flush(30)
        ids = agent.trail_ids()
    row = ledger("second agent on the same data directory", load, ids,
                 note=f"second agent exit {rc}")
    fault_table.append(row)
    assert rc != 0 and "lock" in log.lower(), log
    assert row.lost == 0, row


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False)
    return done.returncode == 0


def test_disk_full_then_freed(tmp_path: Path, fault_table: list[FaultRow]) -> None:
    data = tmp_path / "data"
    if not _mount_tmpfs(data, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        socket = tmp_path / "ingest.sock"
        agent = AgentProc(tmp_path, data, socket, "--wal-segment-bytes", "65536")
        with Load(socket) as load:
            with running(agent):
                load.offer(200)
                assert load.flush(30)
                filler = data / "filler"
                # Fill the file system to the last block (unbuffered: close() cannot fail).
                with open(filler, "wb", buffering=0) as f:
                    try:
                        while True:
                            f.write(b"\0" * 4096)
                    except OSError:
                        pass
                load.offer(2000)
                until(lambda: _refused(agent) > 0, "disk-full refusals")
                refused = _refused(agent)
                assert not _ready(agent), "/readyz stays 200 while the disk refuses"
                filler.unlink()
                assert load.flush(60), "not delivered after the disk was freed"
                assert _ready(agent)
            with running(agent):  # a restart reads back every acknowledged batch
                # Recorded trails are in the record log (their ingest segments are reclaimed);
                # the rest is rebuilt from the WAL.
                ids = sorted(set(agent.trail_ids()) | set(agent.recorded_ids()))
        row = ledger("disk full (tmpfs), then freed", load, ids,
                     note=f"batches refused while full: {refused}")
        fault_table.append(row)
        assert row.lost == 0, row
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def _refused(agent: AgentProc) -> int:
    import urllib.request

    with urllib.request.urlopen(agent.base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("vllm_audit_ingest_refused_batches") and 'reason="disk_full"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def _ready(agent: AgentProc) -> bool:
    from harness import procs

    return procs.http_ok(agent.base + "/readyz")


class _FlakyRecordLog(RecordLog):
    """Fails its first appends (an agent-side exception while a batch is applied), then works."""

    failures_left = 3

    def append(self, *args: Any, **kwargs: Any) -> int:
        # Only a trail's record fails: the log's own (its genesis, the level) go in.
        if _FlakyRecordLog.failures_left > 0 and kwargs.get("kind", "request") == "request":
            _FlakyRecordLog.failures_left -= 1
            raise RuntimeError("injected record log failure")
        return super().append(*args, **kwargs)


async def test_agent_side_exception_mid_stream(tmp_path: Path,
                                               fault_table: list[FaultRow]) -> None:
    """The stream ends with a status (not silence), the hook's real sender reconnects and
    resends, and after a restart every acknowledged trail is recorded."""
    _FlakyRecordLog.failures_left = 3
    socket = tmp_path / "ingest.sock"
    load = Load(socket, batch_events=10)
    with load:
        async with agent(tmp_path, record_log=_FlakyRecordLog,
                         expected_errors=("ingest.stream", "ingest.apply")) as (handle, _):
            load.offer(200)
            assert await asyncio.to_thread(load.flush, 60), "the hook wedged"
            ends = dict(load.sender.stats.stream_ends)
        async with agent(tmp_path) as (handle, _):  # replay records what failed to apply
            await until_async(lambda: handle.state.trails.open_trails() == 0, "replayed")
            await handle.state.records.stop(5.0)
    ids = await asyncio.to_thread(_exported_trail_ids, tmp_path / "data",
                                  tmp_path / "export.jsonl")
    row = ledger("agent-side exception mid-stream (x3)", load, ids,
                 note=f"stream ends seen by the hook: {ends}")
    fault_table.append(row)
    assert any("INTERNAL" in k for k in ends), ends
    assert row.lost == 0, row
