"""The in-response audit's two readers against a real agent (in-process, real sockets) fed by
the hook's real sender: the ingest socket by default (no address, no token), the query API
with its token; who may read back over the ingest socket; counts as JSON numbers."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import grpc
import pytest

from tests.support.agent_harness import agent
from tests.support.sender_harness import running_sender
from vllm_audit.v1 import ingest_pb2, ingest_pb2_grpc
from vllm_audit_agent.api.tokens import ADMIN_TOKEN_FILE
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.events import raw_events as raw
from vllm_hooks.http.response_audit import ResponseAuditor


def _engine_events(engine_id: str) -> list[tuple[object, ...]]:
    """What the EngineCore's hook offers for one structured request of two steps."""
    t = time.time_ns()
    return [
        (raw.LIFECYCLE, t, engine_id, raw.ADDED, 5, 0, "", "", 16, True, "chatcmpl-x"),
        (raw.GRAMMAR, t, engine_id, "xgrammar", "json", 1.5, "", "ab" * 32, "", 10),
        (raw.STEP, t, engine_id, 1, [7], 3, True, False, None, 1024, [3], 0, 0, 0),
        (raw.STEP, t, engine_id, 2, [8], 900, True, True, None, 1024, [900], 0, 0, 0),
        (raw.SO_SUMMARY, t, engine_id, "xgrammar", 2, 2, 0, 3, 900, 451.5, True, 0, -1, -1,
         0, 0, 0, 0, ""),
        (raw.LIFECYCLE, t, engine_id, raw.FINISHED, 5, 2, "stop", "FINISHED_STOPPED", 16,
         True),
    ]


def _settings(socket: Path, **values: object) -> HookSettings:
    fields: dict[str, object] = {"response_timeout_ms": 3000, **values}
    # the ignore[arg-type] below: HookSettings' fields are typed one by one, these are objects
    return HookSettings(enabled=True, agent_address=str(socket), response_level="full",
                        **fields)  # type: ignore[arg-type]


def _check(audit: dict[str, object], trail_id: str) -> None:
    assert "error" not in audit, audit
    assert audit["request_id"] == trail_id
    summary = audit["audit_summary"]
    assert isinstance(summary, dict)
    assert (summary["grammar_backend"], summary["grammar_spec_type"]) == ("xgrammar", "json")
    # 64-bit counts are JSON numbers, as vLLM's own usage fields are.
    assert summary["allowed_tokens_min"] == 3 and summary["allowed_tokens_max"] == 900
    assert summary["steps"] == 2 and summary["allowed_tokens_mean"] == 451.5
    events = audit["events"]
    assert isinstance(events, list)
    steps = [e["so_step"] for e in events if "so_step" in e]
    assert [s["allowed_tokens"] for s in steps] == [3, 900]
    assert [s["allowed_per_token"] for s in steps] == [[3], [900]]


async def test_read_back_over_the_ingest_socket_needs_no_address_or_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_AUDIT_INSTANCE_KEY", "launch-a")
    trail_id = uuid.uuid4().hex
    async with agent(tmp_path) as (_, _publisher):
        socket = tmp_path / "ingest.sock"
        with running_sender(socket, role="engine_core") as (sender, buffer):
            for event in _engine_events(f"chatcmpl-{trail_id}-abcdefgh"):
                buffer.offer(event)
            # In a worker thread: the agent answers on this test's event loop.
            assert await asyncio.to_thread(sender.flush, 5.0)
        settings = _settings(socket)
        assert settings.query_token == ""
        _check(await ResponseAuditor(settings).audit((trail_id,)), trail_id)

        # Another vLLM launch on the same socket reads back nothing this one wrote.
        monkeypatch.setenv("VLLM_AUDIT_INSTANCE_KEY", "launch-b")
        other = await ResponseAuditor(_settings(socket, response_timeout_ms=200)).audit(
            (trail_id,))
        assert other == {"error": "audit not available within 200 ms (no trail yet)"}
        # Nor does a caller without a key, or one asking out of bounds.
        stub = ingest_pb2_grpc.IngestServiceStub(grpc.aio.insecure_channel(f"unix:{socket}"))
        for request, code in (
            (ingest_pb2.ReadAuditRequest(trail_ids=[trail_id]), grpc.StatusCode.INVALID_ARGUMENT),
            (ingest_pb2.ReadAuditRequest(instance_key=b"launch-a", trail_ids=[trail_id] * 5),
             grpc.StatusCode.INVALID_ARGUMENT),
            (ingest_pb2.ReadAuditRequest(instance_key=b"launch-b", trail_ids=[trail_id]),
             grpc.StatusCode.NOT_FOUND),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ReadAudit(request, timeout=5)
            assert info.value.code() == code
        # Only the audit fields: nothing of identity, prompt or output is in the reply.
        reply = await stub.ReadAudit(ingest_pb2.ReadAuditRequest(
            instance_key=b"launch-a", trail_ids=["unknown", trail_id]), timeout=5)
        assert reply.request_id == trail_id and reply.finish_reason == "stop"
        assert not reply.events  # asked without events


async def test_the_query_api_path_still_works_with_its_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_AUDIT_INSTANCE_KEY", "launch-a")
    trail_id = uuid.uuid4().hex
    async with agent(tmp_path) as (handle, _publisher):
        socket = tmp_path / "ingest.sock"
        with running_sender(socket, role="engine_core") as (sender, buffer):
            for event in _engine_events(f"chatcmpl-{trail_id}-abcdefgh"):
                buffer.offer(event)
            # In a worker thread: the agent answers on this test's event loop.
            assert await asyncio.to_thread(sender.flush, 5.0)
        token = (tmp_path / "data" / ADMIN_TOKEN_FILE).read_text().strip()
        settings = _settings(socket, query_address=handle.query_address, query_token=token)
        _check(await ResponseAuditor(settings).audit((trail_id,)), trail_id)
        # A wrong token says why the audit is missing.
        wrong = _settings(socket, query_address=handle.query_address, query_token="nope",
                          response_timeout_ms=300)
        audit = await ResponseAuditor(wrong).audit((trail_id,))
        # (Refused first as UNAUTHENTICATED; a host that keeps failing is backed off.)
        assert audit["error"] in (
            "audit not available within 300 ms (agent: UNAUTHENTICATED)",
            "audit not available within 300 ms (agent: RESOURCE_EXHAUSTED)"), audit
