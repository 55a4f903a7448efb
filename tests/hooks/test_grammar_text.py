"""Whether a GrammarCompiled event carries the grammar's text: at levels full and up by
default, so a record at `full` is a proof `vllm-audit replay` can re-run (issue 24: replay at
`full` failed unless VLLM_AUDIT_INCLUDE_GRAMMAR=true); the variable still forces it either
way, and the size cap (VLLM_AUDIT_GRAMMAR_MAX_BYTES) still applies."""

from __future__ import annotations

import pytest

from vllm_hooks.config.levels import Level
from vllm_hooks.config.settings import HookSettings


@pytest.mark.parametrize(("env", "kept_at"), [
    ({}, {Level.FULL, Level.FULL_WITH_ALLOWED_SETS}),
    ({"VLLM_AUDIT_PRESET": "minimal"}, {Level.FULL, Level.FULL_WITH_ALLOWED_SETS}),
    ({"VLLM_AUDIT_INCLUDE_GRAMMAR": "true"}, set(Level)),
    ({"VLLM_AUDIT_PRESET": "standard"}, set(Level)),
    ({"VLLM_AUDIT_INCLUDE_GRAMMAR": "false"}, set()),
    ({"VLLM_AUDIT_PRESET": "forensic", "VLLM_AUDIT_INCLUDE_GRAMMAR": "false"}, set()),
])
def test_the_grammar_text_is_kept_at_full_and_up_unless_the_variable_says(
        env: dict[str, str], kept_at: set[Level]) -> None:
    settings = HookSettings.from_env(env)
    assert {level for level in Level if settings.keeps_grammar(int(level))} == kept_at


def test_the_cap_still_applies() -> None:
    assert HookSettings.from_env({}).grammar_max_bytes == 64 * 1024
    assert HookSettings.from_env({"VLLM_AUDIT_GRAMMAR_MAX_BYTES": "100"}).grammar_max_bytes == 100
