"""The archive's metrics: what was uploaded, what failed and why (every reason born at 0),
what was dead-lettered, what waits, and for how long uploads have been failing (the alert's
input). Read from the uploader's counters and snapshots: a scrape never calls S3."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vllm_audit_agent.archive.store import FAILURE_REASONS
from vllm_audit_agent.archive.uploader import Archiver


class ArchiveCollector(Collector):
    def __init__(self, archiver: Archiver) -> None:
        self.archiver = archiver

    def collect(self) -> Iterator[Metric]:
        a, c = self.archiver, self.archiver.counters
        yield CounterMetricFamily("vllm_audit_archive_uploaded_segments",
                                  "Record-log segments the WORM archive received (with their "
                                  "checkpoint objects)", value=c["uploaded_segments"])
        yield CounterMetricFamily("vllm_audit_archive_uploaded_bytes",
                                  "Bytes uploaded to the WORM archive", value=c["uploaded_bytes"])
        failures = CounterMetricFamily("vllm_audit_archive_upload_failures",
                                       "Failed archive calls by reason (transient ones are "
                                       "retried; permanent ones dead-letter after retries)",
                                       labels=["reason"])
        dead = CounterMetricFamily("vllm_audit_archive_dead_lettered_segments",
                                   "Segments written to the dead-letter directory instead of "
                                   "the archive, by reason", labels=["reason"])
        for reason in FAILURE_REASONS:
            failures.add_metric([reason], c[f"failures_{reason}"])
            dead.add_metric([reason], c[f"dead_lettered_{reason}"])
        yield failures
        yield dead
        yield CounterMetricFamily("vllm_audit_archive_redriven_segments",
                                  "Dead-lettered segments a later start got into the archive",
                                  value=c["redriven_segments"])
        yield GaugeMetricFamily("vllm_audit_archive_pending_segments",
                                "Sealed segments not yet archived (retention keeps them)",
                                value=a.pending_segments)
        now = a.clock()
        oldest = a.oldest_pending_ms
        yield GaugeMetricFamily("vllm_audit_archive_oldest_pending_age_seconds",
                                "Age of the newest record of the oldest segment waiting for the "
                                "archive (0: none waits)",
                                value=max(0.0, now - oldest / 1000) if oldest is not None else 0.0)
        yield GaugeMetricFamily("vllm_audit_archive_failing_seconds",
                                "Seconds since archive calls started failing without a success "
                                "since (0: not failing)",
                                value=now - a.failing_since if a.failing_since is not None else 0.0)
        yield GaugeMetricFamily("vllm_audit_archive_last_success_timestamp_seconds",
                                "Unix time of the last segment archived (0: none this run)",
                                value=a.last_success or 0.0)
