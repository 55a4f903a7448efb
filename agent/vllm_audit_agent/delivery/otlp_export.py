"""OTLP export of request records as spans (`--otlp-endpoint`, off by default; the `otel`
extra): each request record the log appends becomes one span (siem/otel_span.py) in the
caller's trace, sent by the OpenTelemetry SDK's batch processor over OTLP gRPC.

Best effort, never in the way: the record log's listener only hands the record to the SDK,
whose processor queues it (bounded; when full the SDK drops the span, and `dropped` counts
what did not fit) and exports from its own thread. The record log stays the evidence; a
trace backend is for joining audit records with vLLM's traces, not for keeping them. The
SDK is imported only when the option is set, so the agent needs it only then.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections import Counter
from typing import Any

from vllm_audit_agent.siem.otel_span import span_of

logger = logging.getLogger("vllm_audit.agent")

#: Spans queued in the SDK's processor at most (its default is 2048).
QUEUE_MAX = 8192
SERVICE_NAME = "vllm-audit"


class OtlpExporter:
    def __init__(self, endpoint: str, queue_max: int = QUEUE_MAX,
                 schedule_delay_ms: int = 1000) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        except ImportError as exc:
            raise RuntimeError("--otlp-endpoint needs OpenTelemetry's SDK and OTLP exporter: "
                               "pip install 'vllm-audit[otel]'") from exc
        parts = urllib.parse.urlsplit(endpoint)
        # The caller's sampling decision is not ours: an audit span is always exported.
        self.provider = TracerProvider(sampler=ALWAYS_ON,
                                       resource=Resource.create({"service.name": SERVICE_NAME}))
        self.processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=parts.netloc, insecure=parts.scheme == "http"),
            # The SDK refuses batches larger than its queue (its default batch is 512).
            max_queue_size=queue_max, max_export_batch_size=min(512, queue_max),
            schedule_delay_millis=schedule_delay_ms)
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("vllm_audit_agent")
        self._trace = trace
        self.queue_max = queue_max
        #: offered (request records made spans), dropped (the processor's queue was full),
        #: errors (a record that could not be made a span).
        self.counters: Counter[str] = Counter({"offered": 0, "dropped": 0, "errors": 0})

    def offer(self, record: dict[str, Any]) -> None:
        """The record log's listener: a request record becomes a span; nothing else."""
        if record.get("type", "request") != "request":
            return
        try:
            self._export(record)
        except Exception:  # a malformed record must not reach the append path
            self.counters["errors"] += 1
            logger.exception("otlp: a record could not be made a span")

    def _export(self, record: dict[str, Any]) -> None:
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            Status,
            StatusCode,
            TraceFlags,
        )

        data = span_of(record)
        context = None
        if data.parent is not None:
            trace_id, span_id, flags = data.parent
            parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
            context = self._trace.set_span_in_context(NonRecordingSpan(parent))
        if self._queued() >= self.queue_max:
            self.counters["dropped"] += 1
        span = self.tracer.start_span(data.name, context=context, kind=SpanKind.SERVER,
                                      attributes=data.attributes, start_time=data.start_ns)
        if data.error:
            span.set_status(Status(StatusCode.ERROR, data.error[:200]))
        span.end(end_time=data.end_ns)
        self.counters["offered"] += 1

    def _queued(self) -> int:
        """Spans waiting in the processor (its queue is the SDK's; read defensively)."""
        worker = getattr(self.processor, "_batch_processor", self.processor)
        queue = getattr(worker, "_queue", None)
        try:
            return len(queue) if queue is not None else 0
        except TypeError:
            return 0

    def flush(self, timeout_s: float = 5.0) -> bool:
        return bool(self.provider.force_flush(int(timeout_s * 1000)))

    def stop(self, timeout_s: float = 5.0) -> None:
        """Exports what is queued within the deadline, then shuts the SDK down."""
        self.flush(timeout_s)
        self.provider.shutdown()
