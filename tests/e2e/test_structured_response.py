"""VLLM_AUDIT_IN_RESPONSE through `vllm serve` and the real `openai` client: chat and completion
responses carry usage.structured_output_audit, non-streaming and in a stream's final usage
chunk, and it is the audit the agent holds for the request. Set up as the README says: the
variable alone (the hook reads back over its ingest socket; the query-API path with
VLLM_AUDIT_QUERY_ADDRESS + _TOKEN is tests/hooks/test_response_readers.py)."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from harness import procs
from tests.e2e.conftest import API_KEY, Agent, agent_process
from tests.e2e.helpers import trail_ids_for_client_id, wait_for_trail
from tests.e2e.structured import PERSON

pytestmark = pytest.mark.vllm

RESPONSE_FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
WAITS_MS: list[float] = []


@pytest.fixture(scope="module")
def response_agent(e2e_tmp: Path) -> Iterator[Agent]:
    yield from agent_process(e2e_tmp, "response-agent", None)


@pytest.fixture(scope="module")
def response_server(tiny_model: Path, e2e_tmp: Path, response_agent: Agent) -> Iterator[str]:
    # Out of the box: no query address or token; the hook reads back over its ingest socket.
    proc, base = procs.start_vllm_server(
        tiny_model, e2e_tmp, response_agent.socket, API_KEY,
        VLLM_AUDIT_IN_RESPONSE="true", VLLM_AUDIT_RESPONSE_LEVEL="full",
        VLLM_AUDIT_RESPONSE_TIMEOUT_MS="5000",
    )
    try:
        yield base
    finally:
        proc.stop()


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def _audit(usage: Any) -> dict[str, Any]:
    assert usage is not None
    audit = (usage.model_extra or {}).get("structured_output_audit")
    assert isinstance(audit, dict), usage
    WAITS_MS.append(float(audit["audit_wait_ms"]))
    return audit


def _check(audit: dict[str, Any], client_id: str, completion_tokens: int,
           agent: Agent) -> None:
    assert "error" not in audit, audit
    # The audit names the trail the hook keyed the request on (the client's X-Request-Id is
    # a claim recorded beside it); a completion's engine request is `cmpl-<id>-0`.
    deadline = time.monotonic() + 30
    while not (ids := trail_ids_for_client_id(agent.query, client_id)):
        assert time.monotonic() < deadline, f"no trail for X-Request-Id {client_id}"
        time.sleep(0.05)
    assert audit["request_id"] in ids + [f"{i}-0" for i in ids]
    summary = audit["audit_summary"]
    assert summary["grammar_backend"] == "xgrammar" and summary["grammar_spec_type"] == "json"
    assert summary["steps"] == summary["accepted_tokens"] == completion_tokens
    assert summary["rejected_tokens"] == 0
    steps = [e["so_step"] for e in audit["events"] if "so_step" in e]
    assert len(steps) == completion_tokens
    assert [s["step"] for s in steps] == list(range(1, completion_tokens + 1))
    # The same audit the agent keeps for the request.
    trail = wait_for_trail(agent.query, audit["request_id"],
                           lambda t: t.summary.finish_reason != "")
    so = trail.summary.structured_output
    # Counts are JSON numbers, like vLLM's own usage fields (64-bit ones too).
    assert all(type(summary[k]) is int for k in ("steps", "allowed_tokens_min",
                                                 "allowed_tokens_max"))
    assert all(type(a) is int for s in steps for a in s["allowed_per_token"])
    assert (so.steps, so.accepted_tokens, so.allowed_tokens_min, so.allowed_tokens_max) == (
        summary["steps"], summary["accepted_tokens"], summary["allowed_tokens_min"],
        summary["allowed_tokens_max"])


def test_chat_response_carries_the_audit(response_server: str, response_agent: Agent) -> None:
    request_id = uuid.uuid4().hex
    response = _client(response_server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "name and age"}],
        response_format=RESPONSE_FORMAT, max_tokens=16, temperature=0,
        extra_headers={"X-Request-Id": request_id},
    )
    assert response.usage is not None
    _check(_audit(response.usage), request_id, response.usage.completion_tokens, response_agent)


def test_chat_stream_final_usage_chunk_carries_the_audit(
    response_server: str, response_agent: Agent
) -> None:
    request_id = uuid.uuid4().hex
    stream = _client(response_server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "name and age"}],
        response_format=RESPONSE_FORMAT, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_headers={"X-Request-Id": request_id},
    )
    chunks = list(stream)
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and not chunks[-1].choices
    # Only the final usage chunk carries it; token chunks are untouched.
    assert all("structured_output_audit" not in (c.model_extra or {}) for c in chunks)
    usage = chunks[-1].usage
    assert usage is not None
    _check(_audit(usage), request_id, usage.completion_tokens, response_agent)


@pytest.mark.parametrize("stream", [False, True])
def test_completion_response_carries_the_audit(
    response_server: str, response_agent: Agent, stream: bool
) -> None:
    request_id = uuid.uuid4().hex
    client = _client(response_server)
    extra_body = {"structured_outputs": {"json": PERSON}}
    if stream:
        chunks = list(client.completions.create(
            model="tiny", prompt="name alice", max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body=extra_body,
            extra_headers={"X-Request-Id": request_id}))
        usage = chunks[-1].usage
    else:
        usage = client.completions.create(
            model="tiny", prompt="name alice", max_tokens=16, temperature=0,
            extra_body=extra_body, extra_headers={"X-Request-Id": request_id}).usage
    assert usage is not None
    _check(_audit(usage), request_id, usage.completion_tokens, response_agent)


def test_unstructured_request_gets_an_empty_summary(response_server: str) -> None:
    response = _client(response_server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0)
    audit = _audit(response.usage)
    assert audit["audit_summary"]["grammar_backend"] == ""
    assert audit["events"] == []


def test_report_added_latency() -> None:
    """Not a timed assertion: prints what the field cost (the agent round trips and the wait
    for the engine's events to arrive) for the report."""
    assert WAITS_MS
    print(f"\nresponse audit wait: median {statistics.median(WAITS_MS):.1f} ms, "
          f"max {max(WAITS_MS):.1f} ms over {len(WAITS_MS)} responses")


def test_grammar_that_fails_to_compile_gets_a_400_and_is_recorded(
    response_server: str, response_agent: Agent
) -> None:
    """xgrammar specs are compiled by vLLM's frontend first: a broken one never reaches the
    engine, the client gets a 400 and the trail keeps the status and vLLM's error text."""
    request_id = uuid.uuid4().hex
    bad: Any = {"type": "json_schema",
                "json_schema": {"name": "bad", "schema": {"type": "nonsense"}}}
    with pytest.raises(openai.BadRequestError) as info:
        _client(response_server).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], response_format=bad,
            max_tokens=4, extra_headers={"X-Request-Id": request_id})
    trail = wait_for_trail(response_agent.query, request_id,
                           lambda t: t.summary.status_code != 0)
    assert trail.summary.status_code == 400
    assert trail.summary.error and trail.summary.error in str(info.value)
