"""Shared parts of the structured-output engine tests: the driver run and the trail checks."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import procs
from tests.e2e.conftest import Agent
from tests.e2e.helpers import FINAL_STATES, wait_for_offline_trail, wait_for_trail
from vllm_audit.v1 import events_pb2, query_pb2

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def run_driver(model: Path, tmp: Path, name: str, backend: str, cases: list[dict[str, Any]],
               agent: Agent | None, id_offset: int, speculative: bool = False,
               **hook_env: str) -> list[dict[str, Any]]:
    """Runs tests/e2e/structured_driver.py once (one engine, one backend) and returns its
    per-request results, each with the driver's independent per-row allowed counts. Request
    ids start at `id_offset`: runs that share an agent must not share ids."""
    out = tmp / f"structured-{name}.json"
    config = tmp / f"structured-{name}-config.json"
    config.write_text(json.dumps({
        "model": str(model), "backend": backend, "out": str(out),
        "speculative": speculative, "cases": cases, "id_offset": id_offset,
    }))
    env = procs.base_env(VLLM_ENABLE_V1_MULTIPROCESSING="0", **hook_env)
    if agent is not None:
        env.update(VLLM_AUDIT_ENABLED="true", VLLM_AUDIT_AGENT_ADDRESS=str(agent.socket))
    log = tmp / f"structured-{name}.log"
    with log.open("wb") as err:
        done = subprocess.run(
            [procs.PYTHON, str(procs.REPO / "tests/e2e/structured_driver.py"), str(config)],
            env=env, stdout=err, stderr=err, cwd=procs.REPO, timeout=300, check=False,
        )
    assert done.returncode == 0, f"driver failed ({done.returncode}):\n{log.read_text()[-4000:]}"
    result: list[dict[str, Any]] = json.loads(out.read_text())
    return result


def trail_of(agent: Agent, out: dict[str, Any]) -> query_pb2.GetTrailResponse:
    summary = wait_for_offline_trail(agent.query, str(out["request_id"]))
    return wait_for_trail(
        agent.query, summary.request_id,
        lambda t: t.summary.state in FINAL_STATES
        and (t.summary.structured_output.backend != "" or t.summary.grammar_error != ""),
    )


def steps_of(trail: query_pb2.GetTrailResponse) -> list[events_pb2.StructuredOutputStep]:
    return [e.so_step for e in trail.events if e.WhichOneof("body") == "so_step"]


def grammar_event(trail: query_pb2.GetTrailResponse) -> events_pb2.GrammarCompiled:
    found = [e.grammar_compiled for e in trail.events
             if e.WhichOneof("body") == "grammar_compiled"]
    assert len(found) == 1, found
    return found[0]


def check_trail_matches_engine(agent: Agent, out: dict[str, Any], backend: str) -> None:
    """The trail's steps are the tokens vLLM returned, and each token's allowed count is the
    driver's count of finite logits in the row that token was sampled from."""
    trail = trail_of(agent, out)
    s = trail.summary
    assert s.structured_output.backend == backend, s
    assert s.grammar_backend == backend
    assert s.completion_tokens == len(out["token_ids"])
    steps = steps_of(trail)
    assert [t for st in steps for t in st.accepted_tokens] == out["token_ids"]
    assert len(steps) == len(out["independent_rows"])
    for st, rows, drafted in zip(steps, out["independent_rows"], out["drafts"], strict=True):
        n = len(st.accepted_tokens)
        assert st.accepted
        assert list(st.allowed_per_token) == rows[:n], (st, rows)
        assert st.allowed_tokens == rows[0]
        assert st.drafted_tokens == drafted
        assert st.accepted_draft_tokens == min(drafted, n - 1)
        assert min(rows[:n]) > 0
    so = s.structured_output
    assert so.steps == len(steps)
    assert so.accepted_tokens == len(out["token_ids"])
    assert so.rejected_tokens == 0 and so.first_rejected_step == -1
    assert so.rejection_fate == ""
    assert so.rollbacks == 0
    assert so.drafted_tokens == sum(out["drafts"])
    assert so.accepted_draft_tokens == sum(st.accepted_draft_tokens for st in steps)
    counts = [c for st in steps for c in st.allowed_per_token]
    assert so.allowed_tokens_min == min(counts) and so.allowed_tokens_max == max(counts)


def iter_non_forced(outputs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (o for o in outputs if o["forced"] is None and o["finish_reason"] != "error")


def replay_in_tests(backend: str, trail: query_pb2.GetTrailResponse, model: Path) -> Any:
    """vllm_audit_agent.records.replay.replay in this process (vLLM imported once for the session)."""
    from vllm_audit_agent.records.replay import replay

    if backend == "lm-format-enforcer":
        from tests.e2e.structured_driver import _lm_format_enforcer_shim

        _lm_format_enforcer_shim()
    return replay(trail, str(model))


def forbidden_token(backend: str, trail: query_pb2.GetTrailResponse, model: Path,
                    step: int) -> int:
    """A token the trail's grammar does not allow at `step` (1-based), found by stepping the
    backend itself over the steps before it."""
    from vllm_audit_agent.records.replay import _recorded
    from vllm_hooks.vllm.replay_grammar import GrammarReplayer

    rec = _recorded(trail)
    replayer = GrammarReplayer(rec.backend, rec.spec_type, rec.spec, str(model), rec.vocab_size)
    for st in rec.steps[:step - 1]:
        for token in st.accepted_tokens:
            assert replayer.accept(token)
    return replayer.forbidden_token()
