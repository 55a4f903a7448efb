"""Every structured-output backend vLLM ships, on the real CPU engine, with the constraint kinds
each supports: one step per generated token, each token's allowed count equal to the driver's
own count of the logits vLLM's mask left finite; a forced rejection and a compile error."""

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
    forbidden_token,
    grammar_event,
    iter_non_forced,
    replay_in_tests,
    run_driver,
    steps_of,
    trail_of,
)

pytestmark = pytest.mark.vllm

STRUCTURAL_TAG = json.dumps({
    "type": "structural_tag",
    "structures": [{"begin": "<fn>", "schema": PERSON, "end": "</fn>"}],
    "triggers": ["<fn"],
})
# (kind, spec, prompt, max_tokens, spec_type the hook records)
JSON = ("json", PERSON, "name alice", 24, "json")
JSON_OBJECT = ("json_object", True, "value items", 16, "json_object")
REGEX = ("regex", r"[a-z]{3,8}@[a-z]{2,5}\.com", "mail", 20, "regex")
CHOICE = ("choice", ["paris", "rome", "lima"], "city", 10, "choice")
BACKENDS: dict[str, list[tuple[str, Any, str, int, str]]] = {
    # vLLM turns a choice into an EBNF grammar before xgrammar sees it.
    "xgrammar": [JSON, JSON_OBJECT, REGEX, ("choice", ["paris", "rome", "lima"], "city", 10,
                                            "grammar"),
                 ("grammar", 'root ::= "yes" | "no" | "maybe"', "answer", 10, "grammar"),
                 ("structural_tag", STRUCTURAL_TAG, "call <fn", 16, "structural_tag")],
    "guidance": [JSON, JSON_OBJECT, REGEX, CHOICE,
                 ("grammar", 'start: "yes" | "no" | "maybe"', "answer", 10, "grammar"),
                 ("structural_tag", STRUCTURAL_TAG, "call <fn", 16, "structural_tag")],
    "outlines": [JSON, REGEX, CHOICE],
    "lm-format-enforcer": [JSON, JSON_OBJECT, REGEX, CHOICE],
}
FORCED_STEP = 2
# Valid JSON (the frontend's only check for this backend) that its schema parser refuses.
BAD_SCHEMA = {"type": "nonsense"}


def cases_for(backend: str) -> list[dict[str, Any]]:
    cases = [{"kind": k, "spec": spec, "prompt": p, "max_tokens": n, "spec_type": t}
             for k, spec, p, n, t in BACKENDS[backend]]
    cases.append({"kind": "json", "spec": PERSON, "prompt": "forced", "max_tokens": 12,
                  "spec_type": "json", "force_reject_step": FORCED_STEP})
    if backend == "lm-format-enforcer":
        cases.append({"kind": "json", "spec": BAD_SCHEMA, "prompt": "bad", "max_tokens": 8,
                      "spec_type": "json", "compile_error": True})
    return cases


@pytest.fixture(scope="module")
def so_agent(e2e_tmp: Path) -> Iterator[Agent]:
    yield from agent_process(e2e_tmp, "structured-agent", None)


@pytest.fixture(scope="module", params=list(BACKENDS))
def backend_run(request: pytest.FixtureRequest, tiny_model: Path, e2e_tmp: Path,
                so_agent: Agent) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    backend: str = request.param
    cases = cases_for(backend)
    outputs = run_driver(tiny_model, e2e_tmp, backend, backend, cases, so_agent,
                         id_offset=1000 * (1 + list(BACKENDS).index(backend)),
                         VLLM_AUDIT_LEVEL="full", VLLM_AUDIT_INCLUDE_GRAMMAR="true")
    return backend, cases, outputs


def test_trails_match_the_mask_vllm_applied(backend_run: Any, so_agent: Agent) -> None:
    backend, cases, outputs = backend_run
    checked = 0
    for out in iter_non_forced(outputs):
        case = cases[out["case"]]
        check_trail_matches_engine(so_agent, out, backend)
        # Without drafts there is exactly one step per generated token.
        assert len(out["independent_rows"]) == len(out["token_ids"])
        g = grammar_event(trail_of(so_agent, out))
        assert (g.backend, g.spec_type, g.error) == (backend, case["spec_type"], "")
        assert g.compile_ms > 0 and len(g.spec_sha256) == 64
        checked += 1
    assert checked == len(BACKENDS[backend])


def test_forced_rejection_is_recorded_with_step_token_and_fate(
    backend_run: Any, so_agent: Agent
) -> None:
    _, cases, outputs = backend_run
    [out] = [o for o in outputs if cases[o["case"]].get("force_reject_step")]
    forced = out["forced"]
    assert forced == {"step": FORCED_STEP, "token": forced["token"]}
    assert out["finish_reason"] == "error"
    trail = trail_of(so_agent, out)
    steps = steps_of(trail)
    assert len(steps) == FORCED_STEP
    assert all(st.accepted for st in steps[:-1])
    last = steps[-1]
    assert (last.step, list(last.accepted_tokens), last.accepted) == (
        FORCED_STEP, [forced["token"]], False)
    # The mask allowed other tokens: the count is that of the row the token was forced into.
    assert list(last.allowed_per_token) == out["independent_rows"][-1][:1]
    so = trail.summary.structured_output
    assert (so.rejected_tokens, so.first_rejected_step, so.first_rejected_token) == (
        1, FORCED_STEP, forced["token"])
    assert so.rejection_fate == "FINISHED_ERROR"
    assert trail.summary.finish_reason == "error"


def test_compile_error_is_recorded(backend_run: Any, so_agent: Agent) -> None:
    backend, cases, outputs = backend_run
    if backend != "lm-format-enforcer":
        pytest.skip("the frontend validates this backend's specs before the engine compiles")
    [out] = [o for o in outputs if cases[o["case"]].get("compile_error")]
    assert out["finish_reason"] == "error" and out["token_ids"] == []
    trail = trail_of(so_agent, out)
    g = grammar_event(trail)
    assert g.backend == backend and "Unsupported type nonsense" in g.error
    assert trail.summary.grammar_error == g.error
    assert trail.summary.finish_reason == "error"
    assert steps_of(trail) == []


def test_replay_proves_every_trail(backend_run: Any, so_agent: Agent, tiny_model: Path) -> None:
    backend, cases, outputs = backend_run
    for out in outputs:
        if cases[out["case"]].get("compile_error"):
            continue
        report = replay_in_tests(backend, trail_of(so_agent, out), tiny_model)
        assert report.proven, report
        assert report.steps_checked == len(out["independent_rows"])
        if out["forced"]:
            assert report.rejections_confirmed == 1
            assert report.tokens_checked == len(out["token_ids"]) - 1
        else:
            assert report.rejections_confirmed == 0
            assert report.tokens_checked == len(out["token_ids"])


def test_replay_names_the_altered_step(backend_run: Any, so_agent: Agent,
                                       tiny_model: Path) -> None:
    backend, _, outputs = backend_run
    out = next(o for o in iter_non_forced(outputs) if len(o["token_ids"]) >= 4)
    original = trail_of(so_agent, out)
    steps = [e for e in original.events if e.WhichOneof("body") == "so_step"]

    # A count one off at step 3.
    altered = type(original)()
    altered.CopyFrom(original)
    target = next(e for e in altered.events if e.so_step.step == 3)
    target.so_step.allowed_per_token[0] += 1
    report = replay_in_tests(backend, altered, tiny_model)
    assert report.first_mismatch is not None
    assert (report.first_mismatch.step, report.first_mismatch.token_index) == (3, 0)
    assert "allowed count" in report.first_mismatch.reason

    # A token the grammar forbids at step 2: the driver's row 2 had masked tokens.
    forbidden = forbidden_token(backend, original, tiny_model, 2)
    altered.CopyFrom(original)
    target = next(e for e in altered.events if e.so_step.step == 2)
    target.so_step.accepted_tokens[0] = forbidden
    report = replay_in_tests(backend, altered, tiny_model)
    assert report.first_mismatch is not None
    assert (report.first_mismatch.step, report.first_mismatch.token) == (2, forbidden)
    assert report.first_mismatch.reason == "token not allowed by the grammar here"
    assert len(steps) >= 4


def test_a_backend_vllm_cannot_load_is_refused_at_engine_start(
    tiny_model: Path, e2e_tmp: Path, so_agent: Agent
) -> None:
    """Without the tests' shim, lm-format-enforcer's vLLM integration does not import under
    vLLM 0.32 (`vllm.transformers_utils.tokenizer` is gone) and vLLM would crash the engine on
    the first structured request. With the hook on, the engine is refused while it is built,
    with the reason: no request runs."""
    out = e2e_tmp / "structured-lmfe-unshimmed.json"
    config = e2e_tmp / "structured-lmfe-unshimmed-config.json"
    config.write_text(json.dumps({
        "model": str(tiny_model), "backend": "lm-format-enforcer", "out": str(out),
        "shim": False, "id_offset": 95_000,
        "cases": [{"kind": "json", "spec": PERSON, "prompt": "name alice", "max_tokens": 8}],
    }))
    env = procs.base_env(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_AUDIT_ENABLED="true",
                         VLLM_AUDIT_AGENT_ADDRESS=str(so_agent.socket))
    done = subprocess.run(
        [procs.PYTHON, str(procs.REPO / "tests/e2e/structured_driver.py"), str(config)],
        env=env, capture_output=True, text=True, cwd=procs.REPO, timeout=300, check=False)
    assert done.returncode != 0 and not out.exists()
    assert "AuditStartupError" in done.stderr, done.stderr[-3000:]
    assert ("the structured-output backend 'lm-format-enforcer' cannot be loaded"
            in done.stderr), done.stderr[-3000:]
    assert "vllm.transformers_utils.tokenizer" in done.stderr
    # Refused before a request was added: the engine never reached the grammar.
    assert "grammar_init" not in done.stderr
