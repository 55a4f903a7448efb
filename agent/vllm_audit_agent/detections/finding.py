"""A finding: what a rule saw, about whom, over which window, on which requests' evidence.

The record (type `finding` in the record log's chain, topic `<prefix>.findings`) is the
contract shared with the fleet and a SIEM: `finding_id` (a UUID), `rule`, `ruleset`,
`severity`, `subject` ({kind, value}), `tenant`, `window_start_ms`/`window_end_ms`, `observed`
and `threshold` (the rule's measure and the bound it crossed), `evidence_trail_ids` (at most
EVIDENCE_MAX of the requests that made it, newest last) with `evidence_count` (all of them),
a one-sentence `summary` and the `scope` (pod: one agent's records; fleet: every pod's).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

RULESET = "vllm-audit-rules/1"
#: The finding record's own schema version (the record log adds the chain fields).
FINDING_SCHEMA_VERSION = 1
RULES = ("high_call_rate", "output_length_anomaly", "auth_failure_burst",
         "api_key_many_addresses", "token_spend_spike", "repeated_refusals",
         "flagged_content_rate")
SEVERITIES = ("low", "medium", "high", "critical")
SUBJECT_KINDS = ("user", "api_key", "client_ip", "tenant", "model")
SCOPES = ("pod", "fleet")
EVIDENCE_MAX = 50


@dataclass(frozen=True, slots=True)
class Hit:
    """What a rule reports before the engine's cool-down: the finding without its id,
    severity and scope."""
    rule: str
    subject_kind: str
    subject: str
    tenant: str
    window_start_ms: int
    window_end_ms: int
    observed: float
    threshold: float
    evidence: tuple[str, ...]
    evidence_count: int
    summary: str


def finding_record(hit: Hit, severity: str, scope: str) -> dict[str, Any]:
    """The finding record's fields (the record log adds type, seq, hashes, log_id, time)."""
    evidence = hit.evidence[-EVIDENCE_MAX:]
    return {
        "schema": FINDING_SCHEMA_VERSION,
        "finding_id": str(uuid.uuid4()),
        "rule": hit.rule,
        "ruleset": RULESET,
        "severity": severity,
        "subject": {"kind": hit.subject_kind, "value": hit.subject},
        "tenant": hit.tenant,
        "window_start_ms": hit.window_start_ms,
        "window_end_ms": hit.window_end_ms,
        "observed": float(hit.observed),
        "threshold": float(hit.threshold),
        "evidence_trail_ids": list(evidence),
        "evidence_count": max(hit.evidence_count, len(evidence)),
        "summary": hit.summary,
        "scope": scope,
    }
