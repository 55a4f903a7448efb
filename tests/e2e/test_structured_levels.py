"""Level key-events and VLLM_AUDIT_INCLUDE_GRAMMAR on the real CPU engine (xgrammar): only the
first, rejected and last steps are recorded, each with its row's allowed count, and the trail
keeps the grammar's text under the size cap."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Agent, agent_process
from tests.e2e.structured import PERSON, grammar_event, run_driver, steps_of, trail_of
from vllm_audit.v1 import events_pb2, query_pb2

pytestmark = pytest.mark.vllm

CAP = 200
LONG_REGEX = "(" + "|".join(f"word{i:03d}" for i in range(60)) + ")"
CASES: list[dict[str, Any]] = [
    {"kind": "json", "spec": PERSON, "prompt": "name alice", "max_tokens": 16},
    {"kind": "regex", "spec": LONG_REGEX, "prompt": "word", "max_tokens": 8},
    {"kind": "json", "spec": PERSON, "prompt": "forced", "max_tokens": 12,
     "force_reject_step": 3},
]


@pytest.fixture(scope="module")
def key_agent(e2e_tmp: Path) -> Iterator[Agent]:
    yield from agent_process(e2e_tmp, "key-events-agent", None)


@pytest.fixture(scope="module")
def key_run(tiny_model: Path, e2e_tmp: Path, key_agent: Agent) -> list[dict[str, Any]]:
    # The agent pushes its level to every hook that connects: make it key-events.
    reply = key_agent.control.SetAuditLevel(
        query_pb2.SetAuditLevelRequest(level=events_pb2.AUDIT_LEVEL_KEY_EVENTS))
    assert reply.level == events_pb2.AUDIT_LEVEL_KEY_EVENTS
    return run_driver(tiny_model, e2e_tmp, "key-events", "xgrammar", CASES, key_agent,
                      id_offset=20_000, VLLM_AUDIT_LEVEL="key-events",
                      VLLM_AUDIT_INCLUDE_GRAMMAR="true",
                      VLLM_AUDIT_GRAMMAR_MAX_BYTES=str(CAP))


def test_key_events_keep_first_rejected_and_last_steps(
    key_run: list[dict[str, Any]], key_agent: Agent
) -> None:
    for out in key_run:
        trail = trail_of(key_agent, out)
        steps = steps_of(trail)
        n_steps = len(out["independent_rows"])
        assert n_steps > 2
        forced = out["forced"]
        expected = [1, forced["step"]] if forced else [1, n_steps]
        assert [st.step for st in steps] == expected
        for st in steps:
            assert list(st.allowed_per_token) == out["independent_rows"][st.step - 1][:1]
            assert st.accepted == (not forced or st.step != forced["step"])
        so = trail.summary.structured_output
        # The summary still covers every step.
        assert so.steps == n_steps
        assert so.accepted_tokens == (len(out["token_ids"]) - (1 if forced else 0))


def test_grammar_text_kept_under_the_cap(key_run: list[dict[str, Any]], key_agent: Agent) -> None:
    by_kind = {CASES[o["case"]]["kind"] + str(o["case"]): o for o in key_run}
    g = grammar_event(trail_of(key_agent, by_kind["json0"]))
    text = json.dumps(PERSON)
    assert (g.spec, g.spec_size) == (text, len(text))
    g = grammar_event(trail_of(key_agent, by_kind["regex1"]))
    assert g.spec_size == len(LONG_REGEX) > CAP
    assert g.spec == LONG_REGEX[:CAP]
