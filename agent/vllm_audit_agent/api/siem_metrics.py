"""What leaves the agent for a SIEM or a trace backend beside the records, as Prometheus
counters: the SIEM copies made and dropped by format (`--kafka-format`, delivery/siem_copies.py)
and the OTLP spans exported, dropped and failed (`--otlp-endpoint`, delivery/otlp_export.py).

Every family is born at 0, every format labelled, with either export off too: an alert on
increase() fires on the first drop, and a dashboard shows 0 rather than nothing. A drop loses
no evidence (the record is delivered, the record log keeps it), but a SIEM that misses copies
misses detections, so it is counted where an operator sees it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from vllm_audit_agent.siem.formats import SIEM_FORMATS

if TYPE_CHECKING:  # the OTLP export imports OpenTelemetry's SDK only when it is on
    from vllm_audit_agent.delivery.otlp_export import OtlpExporter
    from vllm_audit_agent.delivery.siem_copies import SiemCopySink


class SiemCollector(Collector):
    def __init__(self, copies: SiemCopySink | None, otlp: OtlpExporter | None) -> None:
        self.copies, self.otlp = copies, otlp

    def collect(self) -> Iterator[Metric]:
        made = CounterMetricFamily("vllm_audit_siem_copies", "SIEM copies of records sent and "
                                   "acknowledged beside them (--kafka-format), by format",
                                   labels=["format"])
        dropped = CounterMetricFamily("vllm_audit_siem_copies_dropped", "SIEM copies dropped "
                                      "(too large or invalid for the broker; their records were "
                                      "delivered), by format", labels=["format"])
        copies = self.copies
        for fmt in SIEM_FORMATS:
            made.add_metric([fmt], copies.made[fmt] if copies is not None else 0)
            dropped.add_metric([fmt], copies.dropped[fmt] if copies is not None else 0)
        yield from (made, dropped)
        counters = self.otlp.counters if self.otlp is not None else {}
        yield CounterMetricFamily("vllm_audit_otlp_spans", "Request records exported as OTLP "
                                  "spans (--otlp-endpoint), dropped ones included",
                                  value=counters.get("offered", 0))
        yield CounterMetricFamily("vllm_audit_otlp_spans_dropped", "OTLP spans dropped: the "
                                  "export's queue was full (the record log keeps the record)",
                                  value=counters.get("dropped", 0))
        yield CounterMetricFamily("vllm_audit_otlp_span_errors", "Request records that could "
                                  "not be made a span", value=counters.get("errors", 0))
