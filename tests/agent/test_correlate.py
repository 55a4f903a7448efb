"""Engine request ids map to the trail of the HTTP request that caused them."""

from __future__ import annotations

import pytest

from vllm_audit_agent.trails.correlate import trail_id_for_engine_request

TRAIL = "0f8e4d2c6b7a49e1a3c5d7f9b1e2a4c6"


@pytest.mark.parametrize(("engine_id", "expected"), [
    (f"chatcmpl-{TRAIL}-1a2b3c4d", (TRAIL, True)),
    (f"2_chatcmpl-{TRAIL}-1a2b3c4d", (TRAIL, True)),   # sample 2 of n > 1
    (f"cmpl-{TRAIL}-0-1a2b3c4d", (TRAIL, True)),       # completions: prompt 0
    (f"cmpl-{TRAIL}-13-1a2b3c4d", (TRAIL, True)),      # ... and prompt 13 join the same trail
    ("0-1a2b3c4d", ("0-1a2b3c4d", False)),             # offline: vLLM's id is the trail
])
def test_engine_ids_join_their_http_trail(engine_id: str, expected: tuple[str, bool]) -> None:
    assert trail_id_for_engine_request(engine_id) == expected
