"""The record log's evidence metrics: its Merkle tree, retention seals, and the start-time
check against the witnesses (delivery/anchor_check.py), each outcome present at 0."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vllm_audit_agent.delivery.anchor_check import ANCHOR_CHECK_OUTCOMES, BREAKS
from vllm_audit_agent.records.log import RecordLog


class EvidenceCollector(Collector):
    def __init__(self, log: RecordLog) -> None:
        self.log = log

    def collect(self) -> Iterator[Metric]:
        log, counters = self.log, self.log.counters
        yield GaugeMetricFamily("vllm_audit_record_log_tree_size", "Leaves of the record log's "
                                "Merkle tree (records since its genesis)",
                                value=log.tree.size if log.tree is not None else 0)
        yield CounterMetricFamily("vllm_audit_record_log_seals", "Retention seals written "
                                  "(each names the segments it lets go)",
                                  value=counters["seals_written"])
        yield CounterMetricFamily("vllm_audit_record_log_expired_before_seal_durable",
                                  "Seals whose segments went before the seal was durable (the "
                                  "log was at its cap)", value=counters["expired_before_seal_durable"])
        yield CounterMetricFamily("vllm_audit_record_log_proof_leaves_dropped", "Leaves dropped "
                                  "from what witnesses' consistency proofs need (a witness far "
                                  "behind)", value=counters["proof_leaves_dropped"])
        checks = CounterMetricFamily("vllm_audit_log_anchor_checks", "Start-time comparisons of "
                                     "the record log with a witness's newest checkpoint of it",
                                     labels=["outcome"])
        for outcome in ANCHOR_CHECK_OUTCOMES:
            checks.add_metric([outcome], counters[f"anchor_check_{outcome}"])
        yield checks
        breaks = CounterMetricFamily("vllm_audit_log_breaks", "Breaks found in the record log "
                                     "at start (the agent went on as a new log naming it)",
                                     labels=["reason"])
        for reason in BREAKS:
            breaks.add_metric([reason], counters[f"break_{reason}"])
        yield breaks
