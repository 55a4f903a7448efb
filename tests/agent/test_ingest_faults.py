"""Ingest under hostile input: the real agent in-process, real gRPC over its Unix socket,
real WAL files, and restarts on the same data directory."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.test_agent import scrape
from tests.support.agent_harness import FailingRecordLog, Hook, agent, lifecycle, published_keys, query, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, query_pb2
from vllm_audit_agent.config import AgentConfig
from vllm_audit_agent.model.validation import MAX_DURATION_MS, UINT64_MAX
from vllm_audit_agent.storage.wal import WriteAheadLog

T = 10**18  # a plausible time_unix_nano
SOCKET = "ingest.sock"


def http(rid: str, **kw: object) -> pb.Event:
    return pb.Event(time_unix_nano=T, request_id=rid,
                    http=pb.HttpRequest(status_code=200, model="m", **kw))  # type: ignore[arg-type]


def finished(rid: str) -> pb.Event:
    return lifecycle(rid, pb.LIFECYCLE_PHASE_FINISHED, T, finish_reason="stop")


def acked(reply: ingest_pb2.IngestReply) -> bool:
    return not reply.ack.refused and not reply.ack.duplicate


async def test_poison_numbers_are_clamped_and_the_agent_restarts_cleanly(tmp_path: Path) -> None:
    poison = {"inf": math.inf, "nan": math.nan, "huge": 1e300, "neg": -5.0}
    async with agent(tmp_path) as (handle, _), Hook(tmp_path / SOCKET) as hook:
        for seq, (name, value) in enumerate(poison.items(), start=1):
            reply = await hook.send(seq, http(name, latency_ms=value, ttft_ms=value,
                                              prompt_tokens=-3, completion_tokens=4))
            assert acked(reply), reply
        clamped = handle.state.clamped_fields
        assert clamped["HttpRequest.latency_ms"] == 4
        assert clamped["HttpRequest.prompt_tokens"] == 4
        trail = await query(handle).GetTrail(query_pb2.GetTrailRequest(request_id="inf"))
        assert trail.summary.latency_ms == MAX_DURATION_MS and trail.summary.prompt_tokens == 0
        _, body = await scrape(handle)
        samples = {(s.name, tuple(s.labels.values())): s.value
                   for f in text_string_to_metric_families(body) for s in f.samples}
        assert samples[("vllm_audit_ingest_clamped_fields_total",
                        ("HttpRequest.latency_ms",))] == 4
        assert samples[("vllm_audit_ingest_clamped_fields_total", ("EngineStats.prompt_tokens",))] == 0
        assert {k[1][0] for k in samples if k[0] == "vllm_audit_ingest_refused_batches_total"} == {
            "wal_full", "disk_full", "disk_error", "shutting_down", "invalid", "too_big"}
    # The restart replays what was acknowledged: no exit, no error, the same trails.
    async with agent(tmp_path) as (handle, _):
        assert handle.state.counters["wal_replayed_batches"] == 4
        assert handle.state.agent_dropped["replay_quarantined_batches"] == 0
        q = query(handle)
        for name, expected in (("inf", MAX_DURATION_MS), ("nan", 0.0), ("huge", MAX_DURATION_MS),
                               ("neg", 0.0)):
            trail = await q.GetTrail(query_pb2.GetTrailRequest(request_id=name,
                                                               include_events=True))
            assert trail.summary.latency_ms == expected
            assert trail.events[0].truncated  # marked as altered by the agent


async def test_token_counts_that_sum_past_int32_saturate(tmp_path: Path) -> None:
    most = (1 << 31) - 1
    async with agent(tmp_path) as (handle, _), Hook(tmp_path / SOCKET) as hook:
        for seq, sample in enumerate(("0_chatcmpl-big-1a2b3c4d", "1_chatcmpl-big-1a2b3c4d"), 1):
            assert acked(await hook.send(seq, lifecycle(sample, pb.LIFECYCLE_PHASE_FINISHED, T,
                                                        num_output_tokens=most)))
        trail = await query(handle).GetTrail(query_pb2.GetTrailRequest(request_id="big"))
        assert trail.summary.completion_tokens == most


async def test_unreplayable_wal_records_are_quarantined_not_fatal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    wal = WriteAheadLog(data, max_bytes=1 << 20, fsync="never")
    # What an older agent could have stored: bytes that are not a Batch, a batch whose
    # latency no trail can hold, and a good batch after them.
    wal.append(b"\xff\xff\xff\xff not a batch")
    poison = pb.Batch(source_id="old", seq=1, events=[http("p", latency_ms=math.inf)])
    wal.append(poison.SerializeToString())
    wal.append(pb.Batch(source_id="old", seq=2, events=[finished("0-00000002")]).SerializeToString())
    wal.append(pb.Batch(source_id="old", seq=2, events=[finished("0-00000002")]).SerializeToString())
    wal.close()
    async with agent(tmp_path) as (handle, published):
        state = handle.state
        assert state.agent_dropped["replay_quarantined_batches"] == 1
        assert state.counters["wal_replay_duplicates"] == 1
        assert state.clamped_fields["HttpRequest.latency_ms"] == 1
        assert await published_keys(published, 1) == ["0-00000002"]
        kept = list((data / "quarantine").iterdir())
        assert [p.read_bytes() for p in kept] == [b"\xff\xff\xff\xff not a batch"]
        assert kept[0].stat().st_mode & 0o777 == 0o600
        stats = await query(handle).GetStats(query_pb2.StatsRequest())
        assert stats.agent_dropped_by_reason["replay_quarantined_batches"] == 1


async def test_a_batch_that_fails_to_apply_at_replay_is_quarantined(tmp_path: Path) -> None:
    async with agent(tmp_path) as (_, _), Hook(tmp_path / SOCKET) as hook:
        assert acked(await hook.send(1, finished("0-0000000a")))
    # At the restart the final trail cannot be recorded: the batch fails to apply.
    async with agent(tmp_path, record_log=FailingRecordLog) as (handle, _):
        assert handle.state.agent_dropped["replay_quarantined_batches"] == 1
        assert len(list((tmp_path / "data" / "quarantine").iterdir())) == 1
        # Still marked as stored: the hook's resend is a duplicate, not a second copy.
        async with Hook(tmp_path / SOCKET) as hook:
            assert (await hook.send(1, finished("0-0000000a"))).ack.duplicate


async def test_gap_markers_of_uint64_max_saturate(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _), Hook(tmp_path / SOCKET) as hook:
        gap = pb.GapMarker(dropped_by_reason={"buffer_full": UINT64_MAX})
        assert acked(await hook.send(1, gap=gap))
        assert acked(await hook.send(2, gap=gap))
        stats = await query(handle).GetStats(query_pb2.StatsRequest())
        assert stats.hook_dropped_by_reason["buffer_full"] == UINT64_MAX
        status, body = await scrape(handle)
        assert status == 200
        assert any(s.name == "vllm_audit_hook_dropped_events_total"
                   for f in text_string_to_metric_families(body) for s in f.samples)
        # Two epochs of one source each declaring 2^64-3 missing batches.
        missing = pb.GapMarker(first_missing_seq=2, last_missing_seq=UINT64_MAX - 1)
        assert acked(await hook.send(UINT64_MAX, gap=missing, epoch=1))
        assert acked(await hook.send(UINT64_MAX, gap=missing, epoch=2))
        stats = await query(handle).GetStats(query_pb2.StatsRequest())
        assert stats.hook_dropped_by_reason["missing_batches"] == UINT64_MAX


@pytest.mark.parametrize(("batch", "refusal", "detail"), [
    (pb.Batch(source_id="s", seq=0, events=[finished("0-1")]), "INVALID", "seq is 0"),
    (pb.Batch(source_id="", seq=1, events=[finished("0-1")]), "INVALID", "source_id is empty"),
    (pb.Batch(source_id="x" * 300, seq=1, events=[finished("0-1")]), "INVALID", "source_id"),
    (pb.Batch(source_id="s", seq=1), "INVALID", "empty batch"),
    (pb.Batch(source_id="s", seq=5, gap=pb.GapMarker(first_missing_seq=4, last_missing_seq=2)),
     "INVALID", "missing range [4, 2]"),
    (pb.Batch(source_id="s", seq=5, gap=pb.GapMarker(first_missing_seq=3, last_missing_seq=9)),
     "INVALID", "not below seq 5"),
    (pb.Batch(source_id="s", seq=1, gap=pb.GapMarker(dropped_by_reason={"a b\n": 1})),
     "INVALID", "reason"),
    (pb.Batch(source_id="s", seq=1, events=[http("big", prompt="p" * 5000)]), "TOO_BIG",
     "cap is 4096"),
])
async def test_bad_batches_are_each_refused_with_a_reason(
        tmp_path: Path, batch: pb.Batch, refusal: str, detail: str) -> None:
    cap = {"max_batch_bytes": 4096} if refusal == "TOO_BIG" else {}
    async with agent(tmp_path, **cap) as (handle, _), Hook(tmp_path / SOCKET) as hook:
        reply = await hook.send_batch(batch)
        assert reply.ack.refused and reply.ack.seq == batch.seq
        assert reply.ack.refusal == ingest_pb2.RefusalReason.Value(f"REFUSAL_REASON_{refusal}")
        assert detail in reply.ack.reason
        assert handle.state.counters[f"refused_batches_{refusal.lower()}"] == 1
        assert handle.state.counters["batches"] == 0
        # The stream goes on: the next good batch is stored.
        assert acked(await hook.send(7, finished("0-00000007")))
        stats = await query(handle).GetStats(query_pb2.StatsRequest())
        assert stats.agent_dropped_by_reason[f"refused_batches_{refusal.lower()}"] == 1


async def test_bytes_that_are_not_a_batch_end_the_stream_with_a_status(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _):
        channel = grpc.aio.insecure_channel(f"unix:{tmp_path / SOCKET}")
        stream = channel.stream_stream("/vllm_audit.v1.IngestService/Stream",
                                       request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
        release = asyncio.Event()

        async def requests():  # type: ignore[no-untyped-def]
            yield b"\xff\xff\xff\xff"
            await release.wait()

        call = stream(requests())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async with asyncio.timeout(10):
                async for _ in call:
                    pass
        release.set()
        await channel.close()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a Batch" in (info.value.details() or "")
        assert handle.state.agent_dropped["malformed_batches"] == 1


async def test_unknown_event_kinds_are_dropped_and_counted(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _), Hook(tmp_path / SOCKET) as hook:
        reply = await hook.send(1, pb.Event(time_unix_nano=T, request_id="0-1"),
                                finished("0-00000001"))
        assert acked(reply)
        assert handle.state.agent_dropped["events_without_body"] == 1
        assert handle.state.counters["events"] == 1


async def test_a_reused_source_id_with_a_new_epoch_is_a_new_source(tmp_path: Path) -> None:
    async with agent(tmp_path, wal_fsync="never") as (handle, _):
        for epoch in (11, 22):  # two processes that both call themselves "reused"
            async with Hook(tmp_path / SOCKET, source="reused") as hook:
                replies = [await hook.send(seq, finished(f"{epoch}-{seq:08x}"), epoch=epoch)
                           for seq in range(1, 51)]
                assert sum(acked(r) for r in replies) == 50, f"epoch {epoch}"
            assert {r.ack.epoch for r in replies} == {epoch}
        assert handle.state.counters["duplicate_batches"] == 0
        assert len(handle.state.trails) == 100
        # Within one epoch a resend is still a duplicate.
        async with Hook(tmp_path / SOCKET, source="reused") as hook:
            assert (await hook.send(50, finished("22-00000032"), epoch=22)).ack.duplicate


async def test_a_seq_of_uint64_max_does_not_poison_the_window(tmp_path: Path) -> None:
    # Before epochs, the window poisoned itself only past 100k held seqs (too slow to send
    # here); test_ingest_window.py drives the same window to its limit directly.
    async with agent(tmp_path, wal_fsync="never") as (handle, _), \
            Hook(tmp_path / SOCKET) as hook:
        assert acked(await hook.send(UINT64_MAX, finished("0-ffffffff")))
        assert (await hook.send(UINT64_MAX, finished("0-ffffffff"))).ack.duplicate
        for seq in range(1, 31):
            assert acked(await hook.send(seq, finished(f"0-{seq:08x}"))), seq
        assert handle.state.counters["batches"] == 31


async def test_the_same_batch_on_two_streams_at_once_is_stored_once(tmp_path: Path) -> None:
    n = 40
    async with agent(tmp_path) as (handle, _):
        async with Hook(tmp_path / SOCKET, source="twin") as a, \
                Hook(tmp_path / SOCKET, source="twin") as b:
            for seq in range(1, n + 1):
                batch = pb.Batch(source_id="twin", epoch=7, seq=seq,
                                 events=[finished(f"0-{seq:08x}")])
                replies = await asyncio.gather(a.send_batch(batch), b.send_batch(batch))
                assert sorted(r.ack.duplicate for r in replies) == [False, True], seq
        assert handle.state.counters["batches"] == n
        assert handle.state.counters["duplicate_batches"] == n
    async with agent(tmp_path) as (handle, _):
        assert handle.state.counters["wal_replayed_batches"] == n
        assert handle.state.counters["wal_replay_duplicates"] == 0
        _, body = await scrape(handle)
        assert "vllm_audit_wal_replay_duplicate_batches_total 0.0" in body


async def test_an_exception_mid_stream_ends_it_with_a_status(tmp_path: Path) -> None:
    async with agent(tmp_path, record_log=FailingRecordLog,
                     expected_errors=("ingest.stream", "ingest.apply")) as (handle, _):
        async with Hook(tmp_path / SOCKET) as hook:
            assert acked(await hook.send(1, lifecycle("0-0000000b", pb.LIFECYCLE_PHASE_ADDED, T)))
            # Finishing the trail appends its record to the failing record log.
            await hook.outbox.put(pb.Batch(source_id=hook.source, seq=2,
                                           events=[finished("0-0000000b")]))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async with asyncio.timeout(10):
                    await hook.reader
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "injected record log failure" in (info.value.details() or "")
        assert handle.state.errors["ingest.stream"] == 1
        # The batch was stored before the failure: the hook's resend is acked as a duplicate.
        async with Hook(tmp_path / SOCKET) as hook:
            assert (await hook.send(2, finished("0-0000000b"))).ack.duplicate


async def test_batches_during_shutdown_are_refused_as_retriable(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _), Hook(tmp_path / SOCKET) as hook:
        assert acked(await hook.send(1, finished("0-00000001")))
        await handle.state.ingest.stop()
        reply = await hook.send(2, finished("0-00000002"))
        assert reply.ack.refused
        assert reply.ack.refusal == ingest_pb2.REFUSAL_REASON_SHUTTING_DOWN
        assert handle.state.refused_by_reason()["shutting_down"] == 1


async def test_the_transport_limit_is_configurable_and_answers_with_a_status(
        tmp_path: Path) -> None:
    async with agent(tmp_path, max_batch_bytes=4096, max_message_bytes=16384) as (_h, _), \
            Hook(tmp_path / SOCKET) as hook:
        reply = await hook.send(1, http("mid", prompt="p" * 10_000))
        assert reply.ack.refusal == ingest_pb2.REFUSAL_REASON_TOO_BIG
        await hook.outbox.put(pb.Batch(source_id=hook.source, seq=2,
                                       events=[http("over", prompt="p" * 20_000)]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async with asyncio.timeout(10):
                await hook.reader
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_batch_and_message_caps_come_from_env_and_flags() -> None:
    config = AgentConfig.from_env({"VLLM_AUDIT_MAX_BATCH_BYTES": "1000",
                                   "VLLM_AUDIT_MAX_MESSAGE_BYTES": "5000"}, max_message_bytes=6000)
    assert (config.max_batch_bytes, config.max_message_bytes) == (1000, 6000)
    with pytest.raises(ValueError, match="max_message_bytes=10 must be >= max_batch_bytes=100"):
        AgentConfig(max_batch_bytes=100, max_message_bytes=10)
    with pytest.raises(ValueError, match="max_batch_bytes=0 must be > 0"):
        AgentConfig(max_batch_bytes=0)
    out = subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", "agent", "--help"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert "--max-batch-bytes" in out.stdout and "--max-message-bytes" in out.stdout


async def test_a_stream_cancelled_mid_append_leaves_its_batch_stored_once(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _):
        state = handle.state
        hook = Hook(tmp_path / SOCKET)
        await hook.__aenter__()
        await hook.next("config")
        # Hold the WAL's own lock: the append of the next batch waits in its worker thread.
        wal_lock = state.wal._lock  # the file lock of the real WAL; released below
        wal_lock.acquire()
        try:
            await hook.outbox.put(pb.Batch(source_id=hook.source, seq=1,
                                           events=[finished("0-0000000c")]))
            await until(state.ingest.wal_lock.locked, "the append to start")
            await hook.__aexit__()  # the client goes away: the server cancels the stream
            await until(lambda: not state.sessions, "the stream handler to end")
        finally:
            wal_lock.release()
        await until(lambda: not state.ingest.wal_lock.locked(), "the append to finish")
        async with Hook(tmp_path / SOCKET) as again:
            assert (await again.send(1, finished("0-0000000c"))).ack.duplicate
        assert state.counters["batches"] == 1
    async with agent(tmp_path) as (handle, _):
        assert handle.state.counters["wal_replayed_batches"] == 1
        assert handle.state.counters["wal_replay_duplicates"] == 0
