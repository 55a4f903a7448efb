"""A KV cache too small for the batch: the scheduler preempts and resumes requests, and each
trail records it, in order, without changing what is generated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Agent, agent_process
from tests.e2e.helpers import wait_for_offline_trail
from tests.e2e.offline import run_offline
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2

pytestmark = pytest.mark.vllm

#: 8 requests of ~200 tokens need 16 blocks of 128 tokens; the cache has 8.
REQUESTS, MAX_TOKENS, KV_BLOCKS = 8, 200, 8


@pytest.fixture(scope="module")
def own_agent(e2e_tmp: Path) -> Iterator[Agent]:
    # Its own agent: offline request ids restart at 0 in every run, so runs must not share one.
    yield from agent_process(e2e_tmp, "preemption-agent", None)


@pytest.fixture(scope="module")
def preempted_run(tiny_model: Path, e2e_tmp: Path, own_agent: Agent) -> list[dict[str, Any]]:
    return run_offline(tiny_model, e2e_tmp, REQUESTS, MAX_TOKENS, "preempted",
                             kv_blocks=KV_BLOCKS, VLLM_AUDIT_ENABLED="true",
                             VLLM_AUDIT_AGENT_ADDRESS=str(own_agent.socket),
                             VLLM_AUDIT_LEVEL="summary")


def test_preemptions_are_recorded_in_order(preempted_run: list[dict[str, Any]],
                                           own_agent: Agent) -> None:
    query = own_agent.query
    preempted = 0
    for out in preempted_run:
        summary = wait_for_offline_trail(query, str(out["request_id"]))
        trail = query.GetTrail(query_pb2.GetTrailRequest(request_id=summary.request_id,
                                                               include_events=True))
        assert trail.summary.completion_tokens == len(out["token_ids"]) == MAX_TOKENS
        phases = [e.lifecycle.phase for e in trail.events if e.WhichOneof("body") == "lifecycle"]
        assert phases[:2] == [pb.LIFECYCLE_PHASE_ADDED, pb.LIFECYCLE_PHASE_SCHEDULED]
        assert phases[-1] == pb.LIFECYCLE_PHASE_FINISHED
        middle = phases[2:-1]
        # Every preemption is followed by a resume, and the summary counts them.
        assert middle == [pb.LIFECYCLE_PHASE_PREEMPTED, pb.LIFECYCLE_PHASE_RESUMED] * (
            len(middle) // 2)
        assert trail.summary.preemptions == len(middle) // 2
        preempted += trail.summary.preemptions
    assert preempted > 0, "the small KV cache forced no preemption"
