"""The detections' Prometheus metrics, the same in the agent and the fleet service: findings by
rule and severity, born at 0 for every rule (an alert on increase() fires on the first), with
the detections off too (then they stay 0); what the cool-down suppressed, the keys evicted from
the rules' bounded state, and the records the agent's queue dropped."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vllm_audit_agent.detections.engine import RuleEngine, severities
from vllm_audit_agent.detections.finding import RULES
from vllm_audit_agent.detections.runner import DetectionRunner
from vllm_audit_agent.detections.settings import DetectionSettings


class DetectionCollector(Collector):
    def __init__(self, engine: RuleEngine | None, runner: DetectionRunner | None = None) -> None:
        self.engine, self.runner = engine, runner
        self._severity = engine.severity if engine is not None else severities(
            DetectionSettings())

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        findings = CounterMetricFamily("vllm_audit_findings", "Findings of the detection rules "
                                       "(one per rule and subject per cool-down)",
                                       labels=["rule", "severity"])
        suppressed = CounterMetricFamily("vllm_audit_detection_suppressed", "Crossings of a "
                                         "rule inside its cool-down (no new finding)",
                                         labels=["rule"])
        evicted = CounterMetricFamily("vllm_audit_detection_evicted_keys", "Keys (users, "
                                      "addresses, …) a rule forgot at its max_keys bound",
                                      labels=["rule"])
        ev = engine.evicted if engine is not None else {}
        for rule in RULES:
            severity = self._severity[rule]
            findings.add_metric([rule, severity],
                                engine.findings[(rule, severity)] if engine is not None else 0)
            suppressed.add_metric([rule], engine.suppressed[rule] if engine is not None else 0)
            evicted.add_metric([rule], ev.get(rule, 0))
        yield from (findings, suppressed, evicted)
        yield CounterMetricFamily("vllm_audit_detection_events", "Records the rules evaluated",
                                  value=engine.events if engine is not None else 0)
        if self.runner is not None:
            yield CounterMetricFamily("vllm_audit_detection_dropped_records", "Records the "
                                      "detections' queue dropped (full: the rules fell behind)",
                                      value=self.runner.counters["dropped_queue_full"])
            yield GaugeMetricFamily("vllm_audit_detection_queued_records", "Records waiting "
                                    "for the rules", value=self.runner.queued)
