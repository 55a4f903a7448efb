"""The fleet service's Prometheus metrics, read from snapshots (a scrape never touches the
store). One series per log carries `log_id` (and the pod its genesis names): bounded by the
fleet's pods, as a log per pod (and per restart after a break) is what the alerts name."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vllm_audit_agent.fleet.consumer import ConsumerStats
from vllm_audit_agent.fleet.verifier import STATUSES, FleetVerifier, LogState


def _pod(log: LogState) -> str:
    return str(log.identity.get("pod") or log.identity.get("host") or "")


class FleetCollector(Collector):
    def __init__(self, verifier: FleetVerifier, stats: ConsumerStats) -> None:
        self.verifier, self.stats = verifier, stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield CounterMetricFamily("vllm_audit_fleet_records", "records consumed from Kafka",
                                  value=s.records)
        yield CounterMetricFamily("vllm_audit_fleet_records_stored",
                                  "records written to the store (re-deliveries of a verified "
                                  "range are not written again)", value=s.stored)
        yield CounterMetricFamily("vllm_audit_fleet_batches", "batches stored and committed",
                                  value=s.batches)
        yield CounterMetricFamily("vllm_audit_fleet_store_errors",
                                  "batches the store refused (retried, not committed)",
                                  value=s.store_errors)
        logs = list(self.verifier.logs.copy().values())  # a snapshot: the consumer thread may add
        counts = GaugeMetricFamily("vllm_audit_fleet_logs", "logs by verification status",
                                   labels=["status"])
        for status in STATUSES:
            counts.add_metric([status], sum(1 for log in logs if log.status == status))
        yield counts
        head = GaugeMetricFamily("vllm_audit_fleet_log_verified_seq",
                                 "the seq up to which each log verifies", labels=["log_id", "pod"])
        broken = GaugeMetricFamily("vllm_audit_fleet_log_broken",
                                   "1 while a log is broken, untrusted or without its genesis, "
                                   "with the reason", labels=["log_id", "pod", "reason"])
        pending = GaugeMetricFamily("vllm_audit_fleet_log_pending_records",
                                    "records waiting for a missing seq", labels=["log_id", "pod"])
        seen = GaugeMetricFamily("vllm_audit_fleet_log_last_record_timestamp_seconds",
                                 "when the fleet last received a record of the log",
                                 labels=["log_id", "pod"])
        for log in logs:
            pod = _pod(log)
            head.add_metric([log.log_id, pod], log.head_seq)
            pending.add_metric([log.log_id, pod], len(log.pending))
            seen.add_metric([log.log_id, pod], log.last_record_ms / 1000)
            if log.status in ("broken", "untrusted", "no_genesis"):
                broken.add_metric([log.log_id, pod, log.reason], 1)
        yield from (head, broken, pending, seen)
        if self.verifier.witnesses.keys:
            yield from self._witnessing(logs)
        lag = GaugeMetricFamily("vllm_audit_fleet_consumer_lag_records",
                                "records on the broker past this replica's positions, per topic "
                                "(its assigned partitions)", labels=["topic"])
        for topic, behind in sorted(s.lag.items()):
            lag.add_metric([topic], behind)
        yield lag
        yield GaugeMetricFamily("vllm_audit_fleet_last_batch_timestamp_seconds",
                                "when the last batch was committed",
                                value=s.last_batch_ms / 1000 if s.last_batch_ms else 0.0)

    def _witnessing(self, logs: list[LogState]) -> Iterator[Metric]:
        """Per log (with --witness-key): how far witnesses cosigned, how long its oldest
        checkpoint has waited for them, and whether that is past --unwitnessed-seconds (0 for
        a log that does not verify)."""
        now_ms = time.time_ns() // 1_000_000
        bound = self.verifier.witnesses.unwitnessed_seconds
        size = GaugeMetricFamily("vllm_audit_fleet_log_witnessed_tree_size",
                                 "the tree size up to which the required witnesses cosigned "
                                 "the log", labels=["log_id", "pod"])
        waited = GaugeMetricFamily("vllm_audit_fleet_log_unwitnessed_seconds",
                                   "age of the log's oldest checkpoint the required witnesses "
                                   "have not cosigned (0: none waits)", labels=["log_id", "pod"])
        flagged = GaugeMetricFamily("vllm_audit_fleet_log_unwitnessed",
                                    "1 while the log's oldest uncosigned checkpoint is older than "
                                    "--unwitnessed-seconds", labels=["log_id", "pod"])
        cosigned = CounterMetricFamily("vllm_audit_fleet_cosignatures",
                                       "cosignature records that verified with a witness key and "
                                       "name the log's own checkpoint", value=sum(
                                           log.witness.cosignatures for log in logs))
        for log in logs:
            # A log not verified (broken, untrusted…) has its own alert: not this one too.
            age = log.unwitnessed_seconds(now_ms) if log.status == "verified" else 0.0
            labels = [log.log_id, _pod(log)]
            size.add_metric(labels, log.witness.witnessed_size)
            waited.add_metric(labels, age)
            flagged.add_metric(labels, 1 if age > bound else 0)
        yield from (size, waited, flagged, cosigned)
