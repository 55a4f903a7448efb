"""Detections figures (`python scripts/benchmarks.py detections`): events/s through the rule
engine (every rule on, the default thresholds) over a mixed stream of request records: 2,000
users over 200 API keys and 1,000 addresses, 20 tenants, 5 models, some errors and flagged
prompts, and a burst now and then so findings are made too. The agent's runner does this work
on a worker thread, beside ingest; the fleet's consumer per batch."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from vllm_audit_agent.detections.engine import RuleEngine
from vllm_audit_agent.detections.settings import DetectionSettings

Rows = list[tuple[str, str, str]]
SIGNALS = {"ruleset": "vllm-audit-signals/1", "prompt": {"sql_injection": 1}, "output": {}}


def stream(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    t = 1_700_000_000_000
    for i in range(n):
        t += rng.randint(0, 4)  # ~500 records/s of event time
        burst = (i // 1000) % 20 == 0  # one user in a burst for 1,000 records every 20,000
        u = rng.randrange(2000)
        user = "burst" if burst else f"user{u}"
        out.append({
            "type": "request", "trail_id": f"t{i}", "revision": 0, "created_unix_ms": t,
            "user": user, "api_key_sha256": f"key{u // 10}",  # a team's key, each its address
            "client_ip": f"10.0.{u // 250}.{u % 250 // 2}",
            "tenant": f"tenant{rng.randrange(20)}", "model": f"model{rng.randrange(5)}",
            "status_code": 500 if rng.random() < 0.01 else 200, "error": "",
            "finish_reason": "stop", "prompt_tokens": rng.randint(10, 500),
            "completion_tokens": int(rng.lognormvariate(4, 0.6)),
            "auth_decision": "AUTH_STATUS_OK",
            "content_signals": SIGNALS if rng.random() < 0.02 else None})
    return out


def bench(n: int = 200_000) -> tuple[float, int]:
    records = stream(n)
    engine = RuleEngine(DetectionSettings())
    start = time.perf_counter()
    found = len(engine.feed_many(records))
    return n / (time.perf_counter() - start), found


def main(print_rows: Callable[[Rows], None]) -> None:
    rate, found = max(bench() for _ in range(3))
    print_rows([("detections: events/s through the rule engine (7 rules, defaults)",
                 f"{rate:,.0f}", f"{found} findings in 200k records")])
