"""The rule engine: records in, finding records out, the same in the agent and the fleet.

`feed(record)` turns a request or access record into an event (event.py), runs every enabled
rule over it and returns the findings, at most one per (rule, subject) per the rule's
cool-down (the first crossing is reported; the rest of a flood is counted as suppressed). The
engine's memory is bounded: each rule keeps at most `max_keys` keys per subject kind, the
cool-downs as many, and `dedupe` (the fleet: its consumer is at-least-once) remembers the last
DEDUPE_MAX event ids. Not thread-safe: one caller at a time (the agent's runner, the fleet's
consumer).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from vllm_audit_agent.detections.baseline_rules import OutputLengthAnomaly, TokenSpendSpike
from vllm_audit_agent.detections.event import event_of
from vllm_audit_agent.detections.finding import RULES, finding_record
from vllm_audit_agent.detections.rate_rules import (
    ApiKeyManyAddresses,
    AuthFailureBurst,
    FlaggedContentRate,
    HighCallRate,
    RepeatedRefusals,
    Rule,
)
from vllm_audit_agent.detections.settings import DetectionSettings
from vllm_audit_agent.detections.state import Lru

DEDUPE_MAX = 65_536
_RULE_CLASSES: dict[str, Any] = {
    "high_call_rate": HighCallRate, "output_length_anomaly": OutputLengthAnomaly,
    "auth_failure_burst": AuthFailureBurst, "api_key_many_addresses": ApiKeyManyAddresses,
    "token_spend_spike": TokenSpendSpike, "repeated_refusals": RepeatedRefusals,
    "flagged_content_rate": FlaggedContentRate,
}


def severities(settings: DetectionSettings) -> dict[str, str]:
    """Each rule's severity (the label its findings counter carries), enabled or not."""
    return {name: settings.rules[name].severity for name in RULES}


class RuleEngine:
    def __init__(self, settings: DetectionSettings, scope: str = "pod",
                 dedupe: bool = False) -> None:
        self.settings, self.scope = settings, scope
        self.rules: list[Rule[Any]] = [
            _RULE_CLASSES[name](settings.rules[name], settings.max_keys) for name in RULES
            if settings.rules[name].enabled]
        for rule in self.rules:
            rule.admit = self._admit
        self.severity = severities(settings)
        self._cooldown_ms = {name: int(settings.rules[name].cooldown_seconds * 1000)
                             for name in RULES}
        #: (rule, subject kind, subject) -> when its last finding's window ended.
        self._fired: Lru[tuple[str, str, str], int] = Lru(
            settings.max_keys * max(1, len(self.rules)), int)
        self._seen: Lru[str, bool] | None = Lru(DEDUPE_MAX, bool) if dedupe else None
        #: findings (rule, severity); suppressed and evicted per rule; events read.
        self.findings: Counter[tuple[str, str]] = Counter(
            {(name, self.severity[name]): 0 for name in RULES})
        self.suppressed: Counter[str] = Counter({name: 0 for name in RULES})
        self.events = 0
        self.duplicates = 0

    @property
    def evicted(self) -> dict[str, int]:
        out = {name: 0 for name in RULES}
        for rule in self.rules:
            out[rule.name] = rule.evicted
        return out

    def feed(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The findings `record` completes (finding records' fields, not yet chained)."""
        event = event_of(record)
        if event is None:
            return []
        if self._seen is not None and record.get("type") == "request":
            key = f"{record.get('trail_id') or record.get('request_id')}"
            if self._seen.peek(key) is not None:
                self.duplicates += 1
                return []
            self._seen.put(key, True)
        self.events += 1
        found = []
        for rule in self.rules:
            for hit in rule.observe(event):  # each admitted by the cool-down (_admit)
                severity = self.severity[hit.rule]
                self.findings[(hit.rule, severity)] += 1
                found.append(finding_record(hit, severity, self.scope))
        return found

    def feed_many(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        return [finding for record in records for finding in self.feed(record)]

    def _admit(self, rule: str, kind: str, subject: str, time_ms: int) -> bool:
        """The cool-down: one finding per (rule, subject) per cooldown_seconds of event time."""
        key = (rule, kind, subject)
        last = self._fired.peek(key)
        if last is not None and time_ms - last < self._cooldown_ms[rule]:
            self.suppressed[rule] += 1
            return False
        self._fired.put(key, time_ms)
        return True
