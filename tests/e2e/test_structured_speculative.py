"""ngram speculative decoding with structured output on the real CPU engine: per step the
drafted and accepted tokens, each accepted token's allowed count from the row it was sampled
from (the driver counts the finite logits of that row), and the rollbacks vLLM makes while
filling draft rows recorded as draft bookkeeping, never as rejections."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import procs
from tests.e2e.conftest import Agent, agent_process
from tests.e2e.structured import (
    PERSON,
    check_trail_matches_engine,
    replay_in_tests,
    run_driver,
    steps_of,
    trail_of,
)

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
    # outlines has no grammar kind; a choice stands in.
    "outlines": {"kind": "choice", "spec": ["yes", "no", "maybe"], "max_tokens": 8,
                 "prompt": "yes no yes no yes"},
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
                         speculative=True, VLLM_AUDIT_INCLUDE_GRAMMAR="true")
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
    # With these prompts the xgrammar and guidance runs have multi-token steps whose rows
    # differ: one count per step (the bonus row's) would have been wrong for some token. (The
    # outlines run's drafts happen to fall where rows agree; its counts are checked above.)
    if backend != "outlines":
        assert any(len(set(st.allowed_per_token)) > 1 for st in multi)


def test_draft_rollbacks_are_bookkeeping_not_rejections(
    spec_run: Any, spec_agent: Agent
) -> None:
    _, outputs = spec_run
    rolled_back = accepted_drafts = 0
    for out in outputs:
        trail = trail_of(spec_agent, out)
        so = trail.summary.structured_output
        steps = steps_of(trail)
        assert so.rejected_tokens == 0 and so.rejection_fate == "" and so.rollbacks == 0
        assert all(st.accepted for st in steps)
        # What stays rolled back is the drafts the engine rejected, never the accepted ones
        # (vLLM rolls every draft back after filling and advances again over those).
        assert all(st.rolled_back_draft_tokens == st.drafted_tokens - st.accepted_draft_tokens
                   for st in steps)
        assert so.rolled_back_draft_tokens == sum(st.rolled_back_draft_tokens for st in steps)
        assert so.rolled_back_draft_tokens == so.drafted_tokens - so.accepted_draft_tokens
        assert so.draft_rollbacks == sum(1 for st in steps if st.rolled_back_draft_tokens)
        assert trail.summary.finish_reason in ("stop", "length")
        rolled_back += so.rolled_back_draft_tokens
        accepted_drafts += so.accepted_draft_tokens
    assert rolled_back > 0 and accepted_drafts > 0


def test_replay_proves_speculative_trails(spec_run: Any, spec_agent: Agent,
                                          tiny_model: Path) -> None:
    backend, outputs = spec_run
    for out in outputs:
        report = replay_in_tests(backend, trail_of(spec_agent, out), tiny_model)
        assert report.proven, report
        assert report.tokens_checked == len(out["token_ids"])


def test_replay_command_on_an_exported_trail(spec_run: Any, spec_agent: Agent,
                                             tiny_model: Path, e2e_tmp: Path) -> None:
    """The CLI, from the file `vllm-audit query get ID --events` writes, and from the agent."""
    backend, outputs = spec_run
    if backend != "xgrammar":
        pytest.skip("one backend is enough for the command line")
    out = outputs[0]
    trail = trail_of(spec_agent, out)
    exported = e2e_tmp / "exported-trail.json"
    got = subprocess.run(
        [procs.PYTHON, "-m", "vllm_audit_agent.cli", "query", "get", trail.summary.request_id, "--events",
         "--address", spec_agent.query_address, "--token-file", str(_token_file(e2e_tmp))],
        env=procs.base_env(), cwd=procs.REPO, capture_output=True, text=True, timeout=60,
        check=False)
    assert got.returncode == 0, got.stderr
    exported.write_text(got.stdout)
    done = _replay_cli(str(exported), tiny_model, spec_agent, e2e_tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["proven"] and result["tokens_checked"] == len(out["token_ids"])
    # Altered at step 2: exit 1 and the step named.
    data = json.loads(exported.read_text())
    step2 = next(e for e in data["events"] if e.get("so_step", {}).get("step") == 2)
    step2["so_step"]["allowed_per_token"][0] = int(step2["so_step"]["allowed_per_token"][0]) + 5
    exported.write_text(json.dumps(data))
    done = _replay_cli(str(exported), tiny_model, spec_agent, e2e_tmp)
    assert done.returncode == 1, done.stderr[-3000:]
    assert json.loads(done.stdout)["first_mismatch"]["step"] == 2
    # By request id, read from the agent.
    done = _replay_cli(trail.summary.request_id, tiny_model, spec_agent, e2e_tmp)
    assert done.returncode == 0 and json.loads(done.stdout)["proven"], done.stderr[-3000:]


def _token_file(e2e_tmp: Path) -> Path:
    """The local admin token the fixture's agent wrote into its data directory."""
    return e2e_tmp / "speculative-agent" / "agent-data" / "admin.token"


def _replay_cli(trail: str, model: Path, agent: Agent,
                e2e_tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [procs.PYTHON, "-m", "vllm_audit_agent.cli", "replay", trail, "--model", str(model),
         "--address", agent.query_address, "--token-file", str(_token_file(e2e_tmp))],
        env=procs.base_env(), cwd=procs.REPO, capture_output=True, text=True, timeout=180,
        check=False,
    )


def test_lm_format_enforcer_refuses_drafts_and_the_refusal_is_recorded(
    tiny_model: Path, e2e_tmp: Path, spec_agent: Agent
) -> None:
    """vLLM's lm-format-enforcer backend cannot roll back, so it refuses to compile any grammar
    when drafts are on: an engine-side compile error per request, recorded with its text."""
    outputs = run_driver(tiny_model, e2e_tmp, "spec-lmfe", "lm-format-enforcer", CASES[:2],
                         spec_agent, id_offset=90_000, speculative=True)
    for out in outputs:
        assert out["finish_reason"] == "error" and out["token_ids"] == []
        trail = trail_of(spec_agent, out)
        assert "does not support speculative tokens" in trail.summary.grammar_error
        assert trail.summary.finish_reason == "error"
        assert steps_of(trail) == []
