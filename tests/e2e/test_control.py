"""The agent switches a running engine's audit level; trails of later requests follow it."""

from __future__ import annotations

import time
import uuid

import openai
import pytest

from tests.e2e.conftest import API_KEY, Agent
from tests.e2e.helpers import FINAL_STATES, trail_ids_for_client_id, wait_for_trail
from vllm_audit.v1 import events_pb2, query_pb2

pytestmark = pytest.mark.vllm

RESPONSE_FORMAT: dict[str, object] = {"type": "json_object"}
#: Upper bound for a pushed level to reach the hook over its open stream (it takes ~ms).
PROPAGATION_S = 1.0


def _set_level(agent: Agent, level: int) -> None:
    reply = agent.control.SetAuditLevel(query_pb2.SetAuditLevelRequest(level=level))
    assert reply.level == level
    assert reply.sources_notified >= 2  # the API server's and the engine core's hooks
    time.sleep(PROPAGATION_S)


def _chat(base: str, request_id: str) -> None:
    openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "json"}], max_tokens=8,
        temperature=0, response_format=RESPONSE_FORMAT,  # type: ignore[arg-type]
        extra_headers={"X-Request-Id": request_id},
    )


def _kinds(trail: query_pb2.GetTrailResponse) -> set[str]:
    return {str(e.WhichOneof("body")) for e in trail.events}


def test_level_switch_off_full_summary(vllm_server: str, agent: Agent) -> None:
    try:
        _set_level(agent, events_pb2.AUDIT_LEVEL_OFF)
        off_id = uuid.uuid4().hex
        _chat(vllm_server, off_id)
        # Proves the absence: a marker request sent after it at FULL is recorded, this is not.
        _set_level(agent, events_pb2.AUDIT_LEVEL_FULL)
        full_id = uuid.uuid4().hex
        _chat(vllm_server, full_id)
        full = wait_for_trail(
            agent.query, full_id,
            lambda t: t.summary.state in FINAL_STATES and t.summary.status_code == 200,
        )
        assert trail_ids_for_client_id(agent.query, off_id) == []
        assert {"so_step", "so_summary", "http", "lifecycle"} <= _kinds(full)
        steps = [e for e in full.events if e.WhichOneof("body") == "so_step"]
        assert len(steps) == full.summary.completion_tokens

        _set_level(agent, events_pb2.AUDIT_LEVEL_SUMMARY)
        summary_id = uuid.uuid4().hex
        _chat(vllm_server, summary_id)
        summary = wait_for_trail(
            agent.query, summary_id,
            lambda t: t.summary.state in FINAL_STATES and t.summary.status_code == 200,
        )
        kinds = _kinds(summary)
        assert "so_step" not in kinds
        assert {"so_summary", "http", "lifecycle"} <= kinds
    finally:
        agent.control.SetAuditLevel(
            query_pb2.SetAuditLevelRequest(level=events_pb2.AUDIT_LEVEL_FULL_WITH_ALLOWED_SETS)
        )
