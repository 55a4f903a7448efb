"""`vllm serve` with the hook's middleware, driven by the real `openai` client."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from typing import Any

import openai
import pytest

from harness.procs import MAX_MODEL_LEN
from tests.e2e.conftest import API_KEY, Agent
from tests.e2e.helpers import FINAL_STATES, engine_sample, scrape, wait_for_trail
from vllm_audit.v1 import events_pb2, query_pb2

pytestmark = pytest.mark.vllm

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
RESPONSE_FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}


def _client(base: str, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)


def _final(t: query_pb2.GetTrailResponse) -> bool:
    return t.summary.state in FINAL_STATES and t.summary.status_code != 0


def test_chat_completion_record(vllm_server: str, agent: Agent) -> None:
    request_id = uuid.uuid4().hex
    response = _client(vllm_server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "name and age please"}],
        response_format=RESPONSE_FORMAT,
        max_tokens=16,
        temperature=0,
        user="alice",
        extra_headers={"X-Request-Id": request_id, "X-Tenant-Id": "bank-a"},
    )
    trail = wait_for_trail(agent.query, request_id, _final)
    s = trail.summary
    assert s.client_ip == "127.0.0.1"
    # The body's user is a claim; the tenant header came from a trusted proxy (the session
    # server trusts the loopback), so it is believed.
    assert (s.user, s.user_source, s.claimed_user) == (
        "alice", events_pb2.IDENTITY_SOURCE_CLAIMED, "alice")
    assert (s.tenant, s.tenant_source) == ("bank-a", events_pb2.IDENTITY_SOURCE_PROXY_HEADER)
    assert not s.ignored_identity_headers
    assert not s.client_disconnected
    assert s.model == "tiny"
    assert s.status_code == 200
    assert (s.auth_decision, s.auth_status) == (events_pb2.AUTH_STATUS_OK, "ok")
    assert not s.stream
    assert response.usage is not None
    assert s.prompt_tokens == response.usage.prompt_tokens
    assert s.completion_tokens == response.usage.completion_tokens
    assert s.finish_reason == response.choices[0].finish_reason
    assert s.grammar_backend == "xgrammar"
    assert s.output == response.choices[0].message.content
    assert s.api_key_sha256 and API_KEY not in str(trail)
    # The trail is keyed on the hook's own id; the client's X-Request-Id is kept beside it.
    assert s.client_request_id == request_id and s.request_id != request_id
    assert len(s.engine_request_ids) == 1 and s.request_id in s.engine_request_ids[0]
    assert (s.http_method, s.http_path) == ("POST", "/v1/chat/completions")
    assert s.user_agent and s.response_bytes > 0 and s.source_ids
    assert s.finalised_by == query_pb2.FINALISED_BY_COMPLETE and s.revision == 0
    assert s.latency_ms > 0


def test_streaming_chat_completion_record(vllm_server: str, agent: Agent) -> None:
    request_id = uuid.uuid4().hex
    stream = _client(vllm_server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "stream it"}],
        response_format=RESPONSE_FORMAT,
        max_tokens=16,
        temperature=0,
        user="bob",
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Request-Id": request_id},
    )
    text, usage = [], None
    for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        usage = chunk.usage or usage
    trail = wait_for_trail(agent.query, request_id, _final)
    s = trail.summary
    assert s.stream
    assert s.user == "bob" and s.status_code == 200 and s.client_ip == "127.0.0.1"
    assert usage is not None
    assert (s.prompt_tokens, s.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert s.output == "".join(text)


def test_request_without_id_gets_one_injected(vllm_server: str, agent: Agent) -> None:
    user = f"no-id-{uuid.uuid4().hex[:8]}"
    _client(vllm_server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        temperature=0, user=user,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        page = agent.query.ListTrails(query_pb2.ListTrailsRequest(user=user))
        if page.trails and page.trails[0].engine_request_ids and page.trails[0].state in FINAL_STATES:
            break
        time.sleep(0.05)
    assert len(page.trails) == 1, "the injected X-Request-Id must join the HTTP and engine halves"
    assert page.trails[0].status_code == 200


def test_rejected_api_key_recorded_as_401(vllm_server: str, agent: Agent) -> None:
    request_id = uuid.uuid4().hex
    with pytest.raises(openai.AuthenticationError):
        _client(vllm_server, key="wrong-key").chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "let me in"}], max_tokens=4,
            extra_headers={"X-Request-Id": request_id},
        )
    trail = wait_for_trail(agent.query, request_id, _final)
    assert trail.summary.status_code == 401
    assert (trail.summary.auth_decision, trail.summary.auth_status) == (
        events_pb2.AUTH_STATUS_REJECTED, "rejected")
    assert not trail.summary.engine_request_ids


def _idle_engine_counters(metrics_url: str, expect: tuple[float, float] | None = None,
                          timeout: float = 15.0) -> tuple[float, float]:
    """(prompt, generation) token counters of the `tiny` server once it reports itself idle."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        samples = scrape(metrics_url)
        values = [engine_sample(samples, name, "tiny") for name in (
            "vllm_audit_engine_num_requests_running", "vllm_audit_engine_num_requests_waiting",
            "vllm_audit_engine_prompt_tokens_total", "vllm_audit_engine_generation_tokens_total")]
        last = values
        running, waiting, prompt, generation = values
        counters = (prompt or 0.0, generation or 0.0)
        if running in (None, 0.0) and waiting in (None, 0.0) and expect in (None, counters):
            return counters
        time.sleep(0.05)
    raise AssertionError(f"engine stats not idle at {expect} within {timeout}s; last {last}")


def test_engine_stats_reach_metrics_when_the_engine_goes_idle(
    vllm_server: str, agent: Agent
) -> None:
    prompt0, generation0 = _idle_engine_counters(agent.metrics_url)
    response = _client(vllm_server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "count my tokens"}],
        max_tokens=12, temperature=0, response_format=RESPONSE_FORMAT,
    )
    assert response.usage is not None
    # The snapshot of the step that emptied the engine arrives at once, not at the next request.
    _idle_engine_counters(agent.metrics_url, expect=(
        prompt0 + response.usage.prompt_tokens, generation0 + response.usage.completion_tokens))


def _abort(base: str, request_ids: list[str]) -> None:
    """vLLM's abort API; it takes the API server's ids (`chatcmpl-<id>`, the response's id:
    the id the hook's middleware gave vLLM, not the client's X-Request-Id)."""
    abort = urllib.request.Request(
        base + "/inference/v1/abort_requests", method="POST",
        data=json.dumps({"request_ids": request_ids}).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(abort, timeout=30) as response:
        assert response.status == 200


def test_aborted_request_is_recorded_as_aborted(vllm_server: str, agent: Agent) -> None:
    """A request aborted mid-generation (vLLM's abort API, as an operator or a router would)
    ends its trail ABORTED with what the engine had produced. It samples n > 1, so its engine
    children (`<index>_chatcmpl-…`) must all join the one trail.

    The abort goes out after the fifth chunk, but on this small machine vLLM sometimes
    generates the whole answer before it lands. Then the trail must say FINISHED, and the
    scenario runs again (at most three times) until vLLM really aborts one."""
    max_tokens, samples = MAX_MODEL_LEN - 64, 16
    for _ in range(3):
        request_id = uuid.uuid4().hex
        stream = _client(vllm_server).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "talk for a long time"}],
            max_tokens=max_tokens, temperature=1.0, seed=1, n=samples, stream=True,
            user="stopped", extra_body={"ignore_eos": True},
            extra_headers={"X-Request-Id": request_id},
        )
        finish_reason = None
        for received, chunk in enumerate(stream, start=1):
            if received == 5:
                _abort(vllm_server, [chunk.id])
            if chunk.choices and chunk.choices[0].finish_reason:
                finish_reason = chunk.choices[0].finish_reason
        trail = wait_for_trail(agent.query, request_id, _final)
        if finish_reason == "abort":
            break
        assert (trail.summary.state, trail.summary.finish_reason) == (
            query_pb2.TRAIL_STATE_FINISHED, "length")
    else:
        pytest.fail("vLLM finished every request before its abort landed")
    s = trail.summary
    assert s.state == query_pb2.TRAIL_STATE_ABORTED
    assert s.finish_reason == "abort"
    assert s.user == "stopped" and s.stream and s.status_code == 200
    assert len(s.engine_request_ids) == samples
    produced = 0
    for engine_id in s.engine_request_ids:
        lifecycle = [e.lifecycle for e in trail.events
                     if e.WhichOneof("body") == "lifecycle" and e.request_id == engine_id]
        phases = [lc.phase for lc in lifecycle]
        assert phases[0] == events_pb2.LIFECYCLE_PHASE_ADDED
        assert events_pb2.LIFECYCLE_PHASE_SCHEDULED in phases
        assert phases[-1] == events_pb2.LIFECYCLE_PHASE_ABORTED
        assert lifecycle[-1].status == "FINISHED_ABORTED"
        assert lifecycle[-1].num_output_tokens < max_tokens
        produced += lifecycle[-1].num_output_tokens
    # The record carries the usage vLLM reported for the request when it reported one, and
    # otherwise what the engine produced, across all samples.
    (http,) = [e.http for e in trail.events if e.WhichOneof("body") == "http"]
    assert s.completion_tokens == (http.completion_tokens or produced)
