"""The same engine in the fleet (scope fleet): one user's calls spread over several pods' logs
make one finding, stored in the fleet's findings table on chDB; a re-delivered batch counts
nothing twice; the consumer reads the pods' findings topic too."""

from __future__ import annotations

import re

import orjson

from vllm_audit_agent.detections.engine import RuleEngine
from vllm_audit_agent.detections.settings import DetectionSettings
from vllm_audit_agent.fleet.consumer import topic_pattern
from vllm_audit_agent.fleet.findings import FindingsTable, FleetDetections
from vllm_audit_agent.fleet.store import FleetStore

T0 = 1_700_000_000_000


def payload(i: int, log_id: str, user: str) -> bytes:
    """A request record's canonical bytes, as a pod published it."""
    return orjson.dumps({"type": "request", "log_id": log_id, "seq": i + 2, "trail_id": f"{log_id}-t{i}",
                         "revision": 0, "created_unix_ms": T0 + i * 100, "user": user,
                         "model": "tiny", "status_code": 200, "completion_tokens": 5},
                        option=orjson.OPT_SORT_KEYS)


def test_fleet_wide_call_rate_across_pods(store: FleetStore) -> None:
    table = FindingsTable(store.backend, store.db)
    detections = FleetDetections(RuleEngine(DetectionSettings(), "fleet", dedupe=True), table)
    # 20 calls a pod from three pods: no pod sees more than 50 in 10 s, the fleet sees 60.
    batch = [payload(i * 3 + pod, f"log-{pod}", "mallory") for i in range(20) for pod in range(3)]
    assert detections.feed(batch[:40]) == 0
    assert detections.feed(batch[40:]) == 1
    assert detections.feed(batch) == 0  # re-delivered: the same calls, not 60 more
    assert detections.engine.duplicates == 60
    (found,) = table.query(rule="high_call_rate")
    assert found["subject"] == {"kind": "user", "value": "mallory"}
    assert found["scope"] == "fleet" and found["type"] == "finding"
    assert {t.split("-t")[0] for t in found["evidence_trail_ids"]} == {"log-0", "log-1", "log-2"}
    assert table.query(subject="mallory") == [found]
    assert table.query(rule="output_length_anomaly") == []
    # A benign fleet: 20 users, 3 pods, nothing.
    quiet = [payload(100 + i, f"log-{i % 3}", f"u{i % 20}") for i in range(200)]
    assert detections.feed(quiet) == 0


def test_the_consumer_reads_the_findings_topic() -> None:
    pattern = re.compile(topic_pattern("vllm-audit"))
    assert pattern.match("vllm-audit.findings")
    assert pattern.match("vllm-audit.requests") and not pattern.match("vllm-audit.engine-stats")
