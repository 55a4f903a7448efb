"""Puts a real in-process agent into a state where every family it can export has samples:
engine stats of two data-parallel engines, finished trails (histograms), losses, and a fake
NVML with an XID (the only GPU counter created on first occurrence)."""

from __future__ import annotations

from tests.support.agent_harness import Hook, lifecycle
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.telemetry.fake_nvml import FakeDevice, FakeNvml
from vllm_audit_agent.telemetry.gpu import NvmlReader


def gpu_reader(pid: int) -> NvmlReader:
    nvml = FakeNvml([FakeDevice(uuid="GPU-aaaa", processes={pid: 3 << 30}),
                     FakeDevice(uuid="GPU-bbbb", unsupported={"nvmlDeviceGetPowerUsage"})])
    nvml.pending_xids.append((1, 79))
    return NvmlReader(nvml)


def engine_stats(index: int, step: int) -> pb.Event:
    return pb.Event(time_unix_nano=10**15, engine_stats=pb.EngineStats(
        engine_index=index, num_running_reqs=step % 3, num_waiting_reqs=step % 2,
        kv_cache_usage=0.1 * (step % 10), prefix_cache_queries=100 * step,
        prefix_cache_hits=30 * step, prompt_tokens=50 * step, generation_tokens=80 * step,
        spec_decode_num_drafts=step, spec_decode_num_draft_tokens=4 * step,
        spec_decode_num_accepted_tokens=3 * step, ttft_seconds_sum=0.2 * step, ttft_count=step,
        inter_token_latency_seconds_sum=0.05 * step, inter_token_latency_count=10 * step,
        tpot_seconds_sum=0.03 * step, tpot_count=step, finished_requests=step,
        queue_time_seconds_sum=0.01 * step, e2e_latency_seconds_sum=1.0 * step,
        prefill_time_seconds_sum=0.1 * step, decode_time_seconds_sum=0.8 * step,
        cached_prompt_tokens=30 * step))


async def ingest(hook: Hook, first_seq: int, requests: int, pid: int) -> int:
    """Sends `requests` served requests (HTTP + engine halves) and engine stats; returns the
    next seq."""
    seq = first_seq
    for i in range(requests):
        rid = f"req{first_seq}x{i}"
        http = pb.Event(time_unix_nano=10**15, request_id=rid, http=pb.HttpRequest(
            status_code=200, model="m", prompt_tokens=10 + i, completion_tokens=20 + i,
            latency_ms=800.0 + 50 * i, ttft_ms=100.0 + 10 * i))
        engine = lifecycle(f"chatcmpl-{rid}-1a2b3c4d", pb.LIFECYCLE_PHASE_FINISHED, 10**15,
                           finish_reason="stop", num_output_tokens=20 + i)
        gap = pb.GapMarker(dropped_by_reason={"buffer_full": 1}) if i == 0 else None
        await hook.send(seq, http, engine, engine_stats(0, seq), engine_stats(1, seq),
                        model="m", pid=pid, gap=gap)
        seq += 1
    return seq
