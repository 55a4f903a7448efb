"""`--otlp-endpoint`: a real agent exports each request record as a span with the GenAI
semantic conventions, in the caller's trace (the request's traceparent), to a real OTLP/gRPC
receiver on loopback (opentelemetry-proto's service definitions; no Collector here)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.siem.otlp_receiver import otlp_receiver
from tests.support.agent_harness import Hook, agent, lifecycle, published_keys, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.config import AgentConfig

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


async def test_records_arrive_as_spans_in_the_callers_trace(tmp_path: Path) -> None:
    with otlp_receiver() as (receiver, endpoint):
        async with agent(tmp_path, otlp_endpoint=endpoint) as (handle, published), \
                Hook(handle.state.config.ingest_socket) as hook:
            await hook.next("config")
            t = time.time_ns()
            http = pb.HttpRequest(method="POST", path="/v1/chat/completions", model="tiny",
                                  user="alice", client_ip="127.0.0.1", status_code=200,
                                  prompt_tokens=7, completion_tokens=5, latency_ms=40.0,
                                  traceparent=f"00-{TRACE_ID}-{CALLER_SPAN}-01")
            await hook.send(1, pb.Event(time_unix_nano=t, request_id="tr1", http=http))
            await hook.send(2, lifecycle("chatcmpl-tr1-1a2b3c4d", pb.LIFECYCLE_PHASE_FINISHED, t,
                                         finish_reason="stop", num_output_tokens=5))
            # One without a traceparent starts a trace of its own.
            await hook.send(3, pb.Event(time_unix_nano=t, request_id="tr2", http=pb.HttpRequest(
                method="POST", path="/v1/completions", model="tiny", status_code=500,
                error="engine dead")))
            await published_keys(published, 2)
        # The agent's stop flushed the export (bounded); the receiver has both.
        await until(lambda: len(receiver.spans) >= 2, "2 spans at the receiver", 10)
    spans = {s["attributes"]["vllm_audit.trail_id"]: s for s in receiver.spans}
    joined = spans["tr1"]
    assert joined["trace_id"] == TRACE_ID and joined["parent_span_id"] == CALLER_SPAN
    assert joined["name"] == "chat tiny" and joined["resource"]["service.name"] == "vllm-audit"
    attributes = joined["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "tiny"
    assert attributes["gen_ai.usage.input_tokens"] == 7
    assert attributes["gen_ai.usage.output_tokens"] == 5
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["http.response.status_code"] == 200 and attributes["user.id"] == "alice"
    assert joined["end"] >= joined["start"] > 0
    own = spans["tr2"]
    assert own["trace_id"] != TRACE_ID and own["parent_span_id"] == ""
    assert own["attributes"]["gen_ai.operation.name"] == "text_completion"
    assert own["status"] == 2 and own["attributes"]["error.type"] == "engine dead"  # ERROR


def test_the_endpoint_must_be_an_otlp_grpc_url() -> None:
    for bad in ("127.0.0.1:4317", "ftp://x:1", "http://x:4317/v1/traces"):
        with pytest.raises(ValueError, match="otlp_endpoint"):
            AgentConfig.from_env({"VLLM_AUDIT_OTLP_ENDPOINT": bad})
    assert AgentConfig.from_env({}).otlp_endpoint is None  # off by default
