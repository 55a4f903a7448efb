"""ngram speculative decoding with structured output on the real CPU engine: per step the
drafted and accepted tokens, each accepted token's allowed count from the row it was sampled
from (the driver counts the finite logits of that row), and the rollbacks vLLM makes while
filling draft rows recorded as draft bookkeeping, never as rejections."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Agent, agent_process
from tests.e2e.structured import PERSON, check_trail_matches_engine, run_driver, steps_of, trail_of

pytestmark = pytest.mark.vllm

# Prompts the tiny model's greedy output repeats, so the n-gram proposer finds drafts.
CASES = [
    {"kind": "json", "spec": PERSON, "max_tokens": 40,
     "prompt": '{"name": " 340 685 745T 340 685 745T'},
    {"kind": "regex", "spec": "(ab|cd)+", "max_tokens": 30, "prompt": "abcdabcdabcd"},
    {"kind": "json", "spec": PERSON, "max_tokens": 40, "prompt": "name alice name alice"},
]
GRAMMARS = {
    "xgrammar": {"kind": "grammar", "spec": 'root ::= ("yes" | "no")+', "max_tokens": 30,
                 "prompt": "yes no yes no yesno"},
    "guidance": {"kind": "grammar", "spec": 'start: ("yes" | "no")+', "max_tokens": 30,
                 "prompt": "yes no yes no yesno"},
}


@pytest.fixture(scope="module")
def spec_agent(e2e_tmp: Path) -> Iterator[Agent]:
    yield from agent_process(e2e_tmp, "speculative-agent", None)


@pytest.fixture(scope="module", params=list(GRAMMARS))
def spec_run(request: pytest.FixtureRequest, tiny_model: Path, e2e_tmp: Path,
             spec_agent: Agent) -> tuple[str, list[dict[str, Any]]]:
    backend: str = request.param
    outputs = run_driver(tiny_model, e2e_tmp, f"spec-{backend}", backend,
                         [*CASES, GRAMMARS[backend]], spec_agent,
                         id_offset=10_000 * (1 + list(GRAMMARS).index(backend)),
                         speculative=True)
    return backend, outputs


def test_each_token_counted_from_its_own_row(spec_run: Any, spec_agent: Agent) -> None:
    backend, outputs = spec_run
    for out in outputs:
        check_trail_matches_engine(spec_agent, out, backend)
    # The run exercised what it claims: drafts proposed, some accepted, steps of many tokens.
    drafted = sum(sum(out["drafts"]) for out in outputs)
    multi = [st for out in outputs for st in steps_of(trail_of(spec_agent, out))
             if len(st.accepted_tokens) > 1]
    assert drafted > 0 and multi
    assert all(st.accepted_draft_tokens == len(st.accepted_tokens) - 1 for st in multi)
    # In a multi-token step at least one later token's row differs from the first row's
    # count somewhere: the bonus row alone would have been the wrong count.
    assert any(len(set(st.allowed_per_token)) > 1 for st in multi)


def test_draft_rollbacks_are_bookkeeping_not_rejections(
    spec_run: Any, spec_agent: Agent
) -> None:
    _, outputs = spec_run
    rolled_back = 0
    for out in outputs:
        trail = trail_of(spec_agent, out)
        so = trail.summary.structured_output
        steps = steps_of(trail)
        assert so.rejected_tokens == 0 and so.rejection_fate == "" and so.rollbacks == 0
        assert all(st.accepted for st in steps)
        assert all(st.rolled_back_draft_tokens <= st.drafted_tokens for st in steps)
        assert so.rolled_back_draft_tokens == sum(st.rolled_back_draft_tokens for st in steps)
        assert (so.draft_rollbacks > 0) == (so.rolled_back_draft_tokens > 0)
        assert trail.summary.finish_reason in ("stop", "length")
        rolled_back += so.rolled_back_draft_tokens
    assert rolled_back > 0
