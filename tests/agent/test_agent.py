"""The agent in-process with real gRPC (Unix socket + loopback TCP) and real HTTP scrapes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.agent_harness import Hook, agent, lifecycle, published_keys, query, requests_of
from tests.support.agent_harness import control as harness_control
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2
from vllm_audit_agent.config import AgentConfig
from vllm_audit_agent.model.record import SCHEMA_VERSION
from vllm_audit_agent.server import AgentHandle
from vllm_audit_agent.storage.wal import WriteAheadLog
from vllm_audit_agent.telemetry.gpu import FakeGpuReader, GpuUnavailable, NvmlReader


def http(rid: str, status: int, t: int) -> pb.Event:
    return pb.Event(time_unix_nano=t, request_id=rid, http=pb.HttpRequest(
        status_code=status, model="m", user="u", prompt_tokens=3, completion_tokens=5,
        auth_status="rejected" if status == 401 else "ok"))


async def scrape(handle: AgentHandle, path: str = "/metrics") -> tuple[int, str]:
    host, port = handle.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_http_and_engine_halves_join_in_either_order(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, published), Hook(handle.state.config.ingest_socket) as hook:
        config = await hook.next("config")
        assert config.config.level == pb.AUDIT_LEVEL_SUMMARY
        # Engine first, then HTTP.
        await hook.send(1, lifecycle("chatcmpl-aaa-1a2b3c4d", pb.LIFECYCLE_PHASE_ADDED, 10**15))
        await hook.send(2, lifecycle("chatcmpl-aaa-1a2b3c4d", pb.LIFECYCLE_PHASE_FINISHED, 10**15,
                                     finish_reason="stop", num_output_tokens=5))
        assert not requests_of(published)
        await hook.send(3, http("aaa", 200, 10**15))
        # HTTP first, then engine.
        await hook.send(4, http("bbb", 200, 10**15))
        await hook.send(5, lifecycle("cmpl-bbb-deadbeef", pb.LIFECYCLE_PHASE_FINISHED, 10**15,
                                     finish_reason="length"))
        # Offline ids stay whole; a 401 needs no engine half.
        await hook.send(6, lifecycle("0-0a0b0c0d", pb.LIFECYCLE_PHASE_FINISHED, 10**15,
                                     finish_reason="stop"), model="offline-model")
        await hook.send(7, http("ccc", 401, 10**15))
        assert await published_keys(published, 4) == ["aaa", "bbb", "0-0a0b0c0d", "ccc"]
        q = query(handle)
        aaa = await q.GetTrail(query_pb2.GetTrailRequest(request_id="aaa", include_events=True))
        assert aaa.summary.state == query_pb2.TRAIL_STATE_FINISHED
        assert list(aaa.summary.engine_request_ids) == ["chatcmpl-aaa-1a2b3c4d"]
        assert (aaa.summary.prompt_tokens, aaa.summary.completion_tokens) == (3, 5)
        assert len(aaa.events) == 3
        offline = await q.GetTrail(query_pb2.GetTrailRequest(request_id="0-0a0b0c0d"))
        assert offline.summary.model == "offline-model"
        ccc = await q.GetTrail(query_pb2.GetTrailRequest(request_id="ccc"))
        assert ccc.summary.state == query_pb2.TRAIL_STATE_FAILED
        record = requests_of(published)[0][1]
        assert record["schema"] == SCHEMA_VERSION and record["gen_ai.request.model"] == "m"


async def test_duplicates_dropped_and_gaps_counted(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _), Hook(handle.state.config.ingest_socket) as hook:
        event = lifecycle("0-11111111", pb.LIFECYCLE_PHASE_ADDED, 10**15)
        first = await hook.send(1, event)
        assert not first.ack.duplicate
        again = await hook.send(1, event)
        assert again.ack.duplicate and again.ack.seq == 1
        gap = pb.GapMarker(dropped_by_reason={"buffer_full": 7}, first_missing_seq=2,
                           last_missing_seq=3)
        await hook.send(4, gap=gap)
        stats = await query(handle).GetStats(query_pb2.StatsRequest())
        assert stats.duplicate_batches == 1
        assert stats.events_ingested == 1
        assert dict(stats.hook_dropped_by_reason) == {"buffer_full": 7, "missing_batches": 2}
        status, body = await scrape(handle)
        assert status == 200
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(body) for s in f.samples}
        assert samples[("vllm_audit_hook_dropped_events_total", (("reason", "buffer_full"),))] == 7
        assert samples[("vllm_audit_ingest_duplicate_batches_total", ())] == 1


async def test_trails_survive_restart_and_torn_tail_is_truncated(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, first), Hook(handle.state.config.ingest_socket) as hook:
        await hook.send(1, lifecycle("0-22222222", pb.LIFECYCLE_PHASE_FINISHED, 10**15,
                                     finish_reason="stop"))
    [(_, recorded)] = requests_of(first)
    # What the first run's sink acknowledged (a stop under load may leave the record after
    # the cursor: then, and only then, the next start sends it again; at-least-once).
    cursor = int((tmp_path / "data" / "records" / "cursor").read_text())
    wal_path = tmp_path / "data" / "ingest-00000001.wal"
    # A crash mid-append: a header promising 16 bytes, then 4.
    wal_path.write_bytes(wal_path.read_bytes() + b"\x10\x00\x00\x00torn")
    async with agent(tmp_path) as (handle, published):
        trail = await query(handle).GetTrail(query_pb2.GetTrailRequest(request_id="0-22222222"))
        assert trail.summary.finish_reason == "stop"
        assert handle.state.agent_dropped["wal_torn_tail_bytes"] == 8
        # The trail was recorded before the stop: replaying the ingest WAL rebuilds it for
        # queries but does not record it again, nor publish what the sink acknowledged.
        assert handle.state.counters["records_deduplicated_at_replay"] == 1
        assert handle.state.records.counters["appended_request"] == 0
        resent = [record for _, record in requests_of(published)]
        assert resent == ([] if cursor >= recorded["seq"] else [recorded])
        # And the resent batch is recognised as a duplicate after the restart.
        async with Hook(handle.state.config.ingest_socket) as hook:
            again = await hook.send(1, lifecycle("0-22222222", pb.LIFECYCLE_PHASE_FINISHED, 10**15))
            assert again.ack.duplicate


def test_wal_refuses_appends_past_its_cap(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, max_bytes=100, fsync="never")
    wal.append(b"x" * 50)
    from vllm_audit_agent.storage.wal import WalFull

    with pytest.raises(WalFull, match="cap 100"):
        wal.append(b"y" * 50)
    assert wal.refused_appends == 1
    assert list(wal.replay()) == [(1, b"x" * 50)]
    wal.close()


async def test_set_level_pushes_config_to_connected_hooks(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _), Hook(handle.state.config.ingest_socket) as hook:
        await hook.next("config")
        control = harness_control(handle)
        reply = await control.SetAuditLevel(query_pb2.SetAuditLevelRequest(level=pb.AUDIT_LEVEL_FULL))
        assert reply.sources_notified == 1
        pushed = await hook.next("config")
        assert pushed.config.level == pb.AUDIT_LEVEL_FULL and pushed.config.version == reply.version
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await control.SetAuditLevel(query_pb2.SetAuditLevelRequest(level=0))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_filters_pagination_and_errors(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _), Hook(handle.state.config.ingest_socket) as hook:
        for i in range(5):
            await hook.send(i + 1, lifecycle(f"{i}-abcdef{i:02d}", pb.LIFECYCLE_PHASE_FINISHED,
                                             10**15 + i * 10**6, finish_reason="stop"),
                            model="even" if i % 2 == 0 else "odd")
        q = query(handle)
        page1 = await q.ListTrails(query_pb2.ListTrailsRequest(page_size=2))
        page2 = await q.ListTrails(query_pb2.ListTrailsRequest(page_size=2,
                                                               page_token=page1.next_page_token))
        page3 = await q.ListTrails(query_pb2.ListTrailsRequest(page_size=2,
                                                               page_token=page2.next_page_token))
        ids = [t.request_id for p in (page1, page2, page3) for t in p.trails]
        # Newest first, every trail once across the pages.
        assert ids == [f"{i}-abcdef{i:02d}" for i in reversed(range(5))]
        assert not page3.next_page_token
        even = await q.ListTrails(query_pb2.ListTrailsRequest(model="even"))
        assert len(even.trails) == 3
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await q.ListTrails(query_pb2.ListTrailsRequest(page_token="garbage"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token is not one this agent made" in str(bad.value.details())
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await q.GetTrail(query_pb2.GetTrailRequest(request_id="nope"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'nope'" in str(missing.value.details())


async def test_linger_finalises_a_half_trail(tmp_path: Path) -> None:
    async with agent(tmp_path, linger_seconds=0.2) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        await hook.send(1, lifecycle("chatcmpl-lonely-1a2b3c4d", pb.LIFECYCLE_PHASE_FINISHED,
                                     10**15, finish_reason="stop"))
        assert not requests_of(published)  # waits for its HTTP half...
        assert await published_keys(published, 1) == ["lonely"]  # ...but not forever
        assert handle.state.trails.counters["finalised_by_linger"] == 1


async def test_health_ready_and_gpu(tmp_path: Path) -> None:
    async with agent(tmp_path, gpu_reader=FakeGpuReader()) as (handle, _):
        assert (await scrape(handle, "/healthz"))[0] == 200
        assert (await scrape(handle, "/readyz"))[0] == 200
        assert (await scrape(handle, "/nope"))[0] == 404
        _, body = await scrape(handle)
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert families["vllm_audit_gpu_available"].samples[0].value == 1
        assert families["DCGM_FI_DEV_GPU_UTIL"].samples[0].value == pytest.approx(42)
        health = await query(handle).Health(query_pb2.HealthRequest())
        assert health.status == "SERVING" and health.gpu_available


def test_nvml_reports_unavailable_without_a_gpu() -> None:
    reader = NvmlReader()
    with pytest.raises(GpuUnavailable, match="NVML unavailable"):
        reader.open()


def test_config_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="query_address='nowhere' is not host:port"):
        AgentConfig(query_address="nowhere")
    with pytest.raises(ValueError, match="wal_fsync='sometimes'"):
        AgentConfig(wal_fsync="sometimes")
    with pytest.raises(ValueError, match="VLLM_AUDIT_MAX_TRAILS='many' is not a int"):
        AgentConfig.from_env({"VLLM_AUDIT_MAX_TRAILS": "many"})
    with pytest.raises(ValueError, match="audit level 'loud'"):
        AgentConfig.from_env({"VLLM_AUDIT_LEVEL": "loud"})


def test_cli_reports_bad_address_clearly() -> None:
    out = subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", "query", "--address", "127.0.0.1:1",
                          "health"], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 1
    assert out.stderr.startswith("vllm-audit: UNAVAILABLE")


async def test_overlapping_gap_ranges_count_each_lost_batch_once(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _), Hook(handle.state.config.ingest_socket) as hook:
        event = lifecycle("0-33333333", pb.LIFECYCLE_PHASE_ADDED, 10**15)
        await hook.send(1, event)
        await hook.send(3, event)  # 2 and 4..5 never arrive; 3 does
        await hook.send(6, event, gap=pb.GapMarker(first_missing_seq=2, last_missing_seq=2))
        # A later marker re-names 2 and spans 3, which was stored: only 4 and 5 are new.
        await hook.send(7, event, gap=pb.GapMarker(first_missing_seq=2, last_missing_seq=5))
        stats = await query(handle).GetStats(query_pb2.StatsRequest())
        assert dict(stats.hook_dropped_by_reason) == {"missing_batches": 3}


def test_engine_ids_correlate_to_their_trail() -> None:
    from vllm_audit_agent.trails.correlate import trail_id_for_engine_request as trail_of

    assert trail_of("chatcmpl-abc-1a2b3c4d") == ("abc", True)
    assert trail_of("cmpl-abc-1a2b3c4d") == ("abc", True)
    # n > 1: every sample is a child `<index>_<parent>`, all in the parent's trail.
    assert trail_of("0_chatcmpl-abc-1a2b3c4d") == trail_of("15_chatcmpl-abc-1a2b3c4d")
    assert trail_of("15_chatcmpl-abc-1a2b3c4d") == ("abc", True)
    # Offline ids stay whole.
    assert trail_of("0-1a2b3c4d") == ("0-1a2b3c4d", False)
