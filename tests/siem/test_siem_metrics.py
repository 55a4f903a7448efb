"""The SIEM copies' and the OTLP export's counters on /metrics: born at 0 on a fresh agent (every
format, either export off), a copy the broker can never take counted as dropped by format while
its record is delivered (a real broker), and spans over the export's queue counted as dropped
(the real OpenTelemetry SDK)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harness.kafka_broker import KafkaBroker
from tests.agent.test_metrics import get
from tests.agent.test_publisher import broker  # noqa: F401 (fixture)
from tests.support.agent_harness import agent
from vllm_audit_agent.api.siem_metrics import SiemCollector
from vllm_audit_agent.delivery.kafka_sink import RECORD_OVERHEAD_BYTES, KafkaSink
from vllm_audit_agent.delivery.otlp_export import OtlpExporter
from vllm_audit_agent.delivery.siem_copies import SiemCopySink
from vllm_audit_agent.records.entry import Entry
from vllm_audit_agent.siem.formats import SIEM_FORMATS, encode

FAMILIES = ("vllm_audit_siem_copies_total", "vllm_audit_siem_copies_dropped_total",
            "vllm_audit_otlp_spans_total", "vllm_audit_otlp_spans_dropped_total",
            "vllm_audit_otlp_span_errors_total")


def samples(text: str) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("format", "")): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name in FAMILIES}


def scrape(collector: SiemCollector) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return samples(generate_latest(registry).decode())


async def test_a_fresh_agent_exports_every_family_at_zero(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _):
        _, body = await get(handle)
    found = samples(body.decode())
    expected = {(name, fmt): 0.0 for name in FAMILIES[:2] for fmt in SIEM_FORMATS}
    expected |= {(name, ""): 0.0 for name in FAMILIES[2:]}
    assert found == expected


async def test_a_copy_too_large_for_the_broker_is_dropped_and_counted(
        broker: KafkaBroker) -> None:  # noqa: F811
    record = {"type": "request", "trail_id": "t1", "log_id": "0" * 32, "seq": 3,
              "hash": "a" * 64, "recorded_unix_ms": 1_790_000_000_000, "user": "alice",
              "user_agent": "x" * 2000}
    value = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    copy = encode("hec", record)
    assert copy is not None and len(copy) > len(value) + 100
    key = b"0" * 32
    inner = KafkaSink(broker.bootstrap, "vllm-audit")
    # The record fits the broker's limit; its HEC copy (the record in an envelope) does not.
    inner.max_request_size = len(key) + len(value) + RECORD_OVERHEAD_BYTES + 50
    sink = SiemCopySink(inner, {"requests": ("hec",)})
    await sink.connect()
    try:
        (ack,) = await sink.send_many([Entry(3, "requests", key, value, 1, "a" * 64)])
        assert not isinstance(ack, BaseException)
        await asyncio.wait_for(ack, 30)  # the record itself is delivered
    finally:
        await sink.close(5.0)
    found = scrape(SiemCollector(sink, None))
    assert found[("vllm_audit_siem_copies_dropped_total", "hec")] == 1
    assert found[("vllm_audit_siem_copies_total", "hec")] == 0
    assert found[("vllm_audit_siem_copies_dropped_total", "ocsf")] == 0


def test_spans_over_the_exports_queue_are_dropped_and_counted() -> None:
    # Nothing listens there: the processor's worker takes one batch (2) and retries it with
    # back-off for seconds, the queue (2) fills behind it, and the rest of the burst is dropped.
    exporter = OtlpExporter("http://127.0.0.1:9", queue_max=2, schedule_delay_ms=60_000)
    try:
        for i in range(50):
            exporter.offer({"type": "request", "trail_id": f"t{i}", "model": "tiny",
                            "http_path": "/v1/chat/completions", "created_unix_ms": 1,
                            "finished_unix_ms": 2})
        exporter.offer({"type": "finding"})  # not a request: no span, not counted
        found = scrape(SiemCollector(None, exporter))
    finally:
        exporter.processor.shutdown()
    assert found[("vllm_audit_otlp_spans_total", "")] == 50
    assert 46 <= found[("vllm_audit_otlp_spans_dropped_total", "")] <= 48
    assert found[("vllm_audit_otlp_span_errors_total", "")] == 0
