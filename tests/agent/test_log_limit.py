"""The rate limit on repeated log lines: a burst passes, the rest is counted, and the next
line that passes says how many were held back."""

from __future__ import annotations

import logging

import pytest

from vllm_audit_agent.log_limit import LogRateLimit, install


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_one_line_per_period_with_the_count(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limit = LogRateLimit(("vllm_audit",), burst=3, rate=0.5, clock=clock)
    remove = install(limit)
    try:
        log = logging.getLogger("vllm_audit.agent.test")
        other = logging.getLogger("elsewhere")
        with caplog.at_level(logging.INFO):
            for i in range(10):
                log.warning("send %d failed", i)
                other.warning("not limited %d", i)
            clock.now = 2.0  # one token back
            log.warning("send %d failed", 10)
            log.warning("another template")
    finally:
        remove()
    mine = [r.getMessage() for r in caplog.records if r.name.startswith("vllm_audit")]
    assert mine == ["send 0 failed", "send 1 failed", "send 2 failed",
                    "send 10 failed [7 similar lines suppressed since the last one]",
                    "another template"]
    assert sum(r.name == "elsewhere" for r in caplog.records) == 10
    assert limit.suppressed == {"vllm_audit": 7}
    # Removed: nothing is limited any more.
    assert all(limit not in h.filters for h in logging.getLogger().handlers)
