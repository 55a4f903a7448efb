"""/metrics of a real in-process agent, scraped over real HTTP: closed reason sets born at 0,
one unit per family, per-engine series and their removal, request histograms, exposition."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from tests.support.agent_harness import Hook, agent, lifecycle, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.api.collectors import AGENT_ERROR_SITES
from vllm_audit_agent.log_limit import LIMITED_LOGGERS
from vllm_audit_agent.server import AgentHandle
from vllm_audit_agent.telemetry import reasons
from vllm_audit_agent.telemetry.gpu import READ_ERROR_FIELDS

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def get(handle: AgentHandle, path: str = "/metrics",
              headers: dict[str, str] | None = None) -> tuple[dict[str, str], bytes]:
    host, port = handle.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    response = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    response["status"] = lines[0].split()[1]
    return response, body


async def samples(handle: AgentHandle) -> Samples:
    _, body = await get(handle)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def by_label(found: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for (n, labels), value in found.items() if n == name}


def stats(index: int, running: int, **kw: object) -> pb.Event:
    return pb.Event(time_unix_nano=10**15, engine_stats=pb.EngineStats(
        engine_index=index, num_running_reqs=running, **kw))  # type: ignore[arg-type]


async def test_every_reason_is_exported_at_zero_before_any_loss(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _):
        found = await samples(handle)
    closed_sets = {
        ("vllm_audit_ingest_refused_batches_total", "reason"): reasons.REFUSAL_REASONS,
        ("vllm_audit_hook_dropped_events_total", "reason"): reasons.HOOK_EVENT_DROP_REASONS,
        ("vllm_audit_agent_dropped_batches_total", "reason"): reasons.AGENT_BATCH_DROP_REASONS,
        ("vllm_audit_publisher_lost_records_total", "reason"):
            reasons.PUBLISHER_RECORD_LOSS_REASONS,
        ("vllm_audit_engine_stats_lost_snapshots_total", "reason"):
            reasons.ENGINE_STATS_LOSS_REASONS,
        ("vllm_audit_log_lines_suppressed_total", "logger"): LIMITED_LOGGERS,
        ("vllm_audit_publisher_failed_sends_total", "reason"): reasons.PUBLISHER_FAILURE_REASONS,
        ("vllm_audit_record_log_expired_segments_total", "reason"):
            reasons.RECORD_LOG_EXPIRY_REASONS,
        ("vllm_audit_trails_total", "state"): reasons.FINAL_TRAIL_STATES,
        ("vllm_audit_trails_evicted_total", "reason"): reasons.TRAIL_EVICTION_REASONS,
        ("vllm_audit_allowed_sets_dropped_total", "reason"): reasons.ALLOWED_SET_DROP_REASONS,
        ("vllm_audit_internal_errors_total", "site"): AGENT_ERROR_SITES,
        ("vllm_audit_gpu_read_errors_total", "field"): READ_ERROR_FIELDS,
    }
    for (name, label), members in closed_sets.items():
        assert by_label(found, name, label) == dict.fromkeys(members, 0.0), name
    # The refusal set is the contract's enum, not a copy of it.
    assert "wal_full" in reasons.REFUSAL_REASONS and "too_big" in reasons.REFUSAL_REASONS
    for name in ("vllm_audit_trail_events_truncated_total", "vllm_audit_trail_late_events_total",
                 "vllm_audit_trails_finalised_by_linger_total", "vllm_audit_hook_lost_batches_total",
                 "vllm_audit_hook_internal_errors_total", "vllm_audit_wal_torn_tail_bytes_total",
                 "vllm_audit_trails_evicted_bytes_total", "vllm_audit_publisher_stop_timeouts_total"):
        assert found[(name, ())] == 0, name
    assert found[("vllm_audit_gpu_available", ())] == 0


async def test_losses_go_to_the_family_of_their_unit(tmp_path: Path) -> None:
    async with agent(tmp_path, max_trail_events=2) as (handle, _), \
            Hook(handle.state.config.ingest_socket) as hook:
        gap = pb.GapMarker(dropped_by_reason={"buffer_full": 7, "from_a_newer_hook": 1,
                                              "internal_error.sender.read": 3},
                           first_missing_seq=2, last_missing_seq=3)
        rid = "0-44444444"
        await hook.send(1, *[lifecycle(rid, pb.LIFECYCLE_PHASE_SCHEDULED, 10**15)
                             for _ in range(3)])
        await hook.send(4, lifecycle(rid, pb.LIFECYCLE_PHASE_FINISHED, 10**15), gap=gap)
        await hook.send(5, lifecycle(rid, pb.LIFECYCLE_PHASE_PREEMPTED, 10**15))  # too late
        found = await samples(handle)
    assert by_label(found, "vllm_audit_hook_dropped_events_total", "reason") == {
        "buffer_full": 7, "unacked_overflow": 0, "convert_error": 0, "other": 1}
    assert found[("vllm_audit_hook_lost_batches_total", ())] == 2
    assert found[("vllm_audit_hook_internal_errors_total", ())] == 3
    assert found[("vllm_audit_trail_events_truncated_total", ())] == 3  # 4 + 1 kept 2
    assert found[("vllm_audit_trail_late_events_total", ())] == 1
    assert by_label(found, "vllm_audit_trails_total", "state")["finished"] == 1


async def test_engines_are_series_per_index_and_vanish_after_the_grace(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _):
        handle.state.engines.grace_seconds = 0.3
        async with Hook(handle.state.config.ingest_socket, source="host:1:1") as hook:
            await hook.send(1, stats(0, 2, ttft_seconds_sum=1.5, ttft_count=3),
                            stats(1, 1), model="m", pid=4242)
            found = await samples(handle)
            running = {dict(labels)["engine_index"]: v for (n, labels), v in found.items()
                       if n == "vllm_audit_engine_num_requests_running"}
            assert running == {"0": 2, "1": 1}  # data-parallel engines do not overwrite
            ttft = ("vllm_audit_engine_time_to_first_token_seconds_sum",
                    (("engine_index", "0"), ("model", "m"), ("source", "host:1:1")))
            assert found[ttft] == 1.5
        # Disconnected: still exported within the grace, gone after it.
        assert "vllm_audit_engine_num_requests_running" in {n for n, _ in await samples(handle)}
        deadline = asyncio.get_running_loop().time() + 10
        while any(n == "vllm_audit_engine_num_requests_running" for n, _ in await samples(handle)):
            assert asyncio.get_running_loop().time() < deadline, "engine series never removed"
            await asyncio.sleep(0.1)
        assert not handle.state.engines.sources


async def test_request_histograms_observe_each_final_trail_once(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _), Hook(handle.state.config.ingest_socket) as hook:
        http = pb.Event(time_unix_nano=10**15, request_id="hhh", http=pb.HttpRequest(
            status_code=200, model="m", prompt_tokens=3, completion_tokens=5,
            latency_ms=2500.0, ttft_ms=500.0))
        await hook.send(1, http)
        await hook.send(2, lifecycle("chatcmpl-hhh-1a2b3c4d", pb.LIFECYCLE_PHASE_FINISHED, 10**15,
                                     finish_reason="stop", num_output_tokens=5))
        await until(lambda: handle.state.trails.finished_by_state["finished"] == 1, "final trail")
        found = await samples(handle)
    m = (("model", "m"),)
    assert found[("vllm_audit_request_latency_seconds_count", m)] == 1
    assert found[("vllm_audit_request_latency_seconds_sum", m)] == 2.5
    assert found[("vllm_audit_request_time_to_first_token_seconds_sum", m)] == 0.5
    # (2.5 s - 0.5 s) over the 4 tokens after the first.
    assert found[("vllm_audit_request_time_per_output_token_seconds_sum", m)] == 0.5
    assert found[("vllm_audit_request_completion_tokens_sum", m)] == 5
    assert found[("vllm_audit_request_prompt_tokens_sum", m)] == 3
    assert found[("vllm_audit_request_latency_seconds_bucket", (("le", "2.5"), *m))] == 1
    assert found[("vllm_audit_request_latency_seconds_bucket", (("le", "1.0"), *m))] == 0


async def test_exposition_negotiates_openmetrics_and_gzip(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _):
        plain, body = await get(handle)
        assert plain["content-type"].startswith("text/plain; version=0.0.4")
        assert "content-encoding" not in plain
        om, om_body = await get(handle, headers={
            "Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            "Accept-Encoding": "gzip, deflate"})
    assert om["content-type"].startswith("application/openmetrics-text")
    assert om["content-encoding"] == "gzip"
    text = gzip.decompress(om_body).decode()
    assert text.endswith("# EOF\n")
    names = {f.name for f in om_families(text)}
    assert {"vllm_audit_build", "process_resident_memory_bytes",
            "vllm_audit_hook_dropped_events"} <= names
    assert b"vllm_audit_build_info{" in body


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (apt-get install prometheus)")
async def test_promtool_accepts_a_real_scrape(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _), Hook(handle.state.config.ingest_socket) as hook:
        await hook.send(1, stats(0, 1), lifecycle("0-55555555", pb.LIFECYCLE_PHASE_FINISHED,
                                                  10**15), model="m", pid=1)
        _, body = await get(handle)
    out = await asyncio.to_thread(subprocess.run, ["promtool", "check", "metrics"], input=body,
                                  capture_output=True, timeout=30, check=False)
    assert out.returncode == 0, (out.stdout + out.stderr).decode()


async def test_each_data_parallel_engine_gets_its_engine_stats_record(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, published), \
            Hook(handle.state.config.ingest_socket, source="host:1:1") as hook:
        await hook.send(1, stats(0, 2, ttft_seconds_sum=1.5, ttft_count=3, finished_requests=2,
                                 queue_time_seconds_sum=0.5), stats(1, 1), model="m", pid=7)
        await hook.send(2, stats(0, 3), stats(1, 0), model="m", pid=7)  # within the interval
        records = [record for topic, _, record in published.records if topic == "engine-stats"]
        assert [(r["engine_index"], r["source_id"], r["model"]) for r in records] == [
            (0, "host:1:1", "m"), (1, "host:1:1", "m")]
    # Those sent within the interval go out when it ends, here at the agent's stop.
    records = [record for topic, _, record in published.records if topic == "engine-stats"]
    assert [(r["engine_index"], r["num_running_reqs"]) for r in records[2:]] == [(0, 3), (1, 0)]
    assert records[0]["ttft_seconds_sum"] == 1.5 and records[0]["queue_time_seconds_sum"] == 0.5


def test_publisher_counters_map_onto_the_closed_loss_sets_by_kind() -> None:
    """Audit records and telemetry are separate families: a lost engine-stats snapshot is not
    an audit-record loss (the critical alert reads only the first)."""
    counters = {"stats_dropped_queue_full": 2, "stats_failed": 1, "published": 9, "retries": 4}
    dead_lettered = {"too_large": 3, "invalid": 0}
    assert reasons.closed(reasons.publisher_losses(dead_lettered),
                          reasons.PUBLISHER_RECORD_LOSS_REASONS) == {
        "dead_letter_too_large": 3, "dead_letter_invalid": 0}
    assert reasons.closed(reasons.engine_stats_losses(counters),
                          reasons.ENGINE_STATS_LOSS_REASONS) == {"queue_full": 2, "send_failed": 1}
