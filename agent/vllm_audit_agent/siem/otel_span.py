"""A request record as an OpenTelemetry span, with the GenAI semantic conventions
(gen_ai.operation.name, gen_ai.request.model, gen_ai.usage.*, gen_ai.response.*) and the
HTTP, client and user attributes of the request: the plain data of it (no OpenTelemetry
import here; delivery/otlp_export.py makes and sends the span).

The span is in the caller's trace when the record has its `traceparent`: trace id from it,
parent = the caller's span, so it sits beside vLLM's own spans of that request. Without one
it starts a trace of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vllm_audit_agent.siem.signals import flagged

#: gen_ai.operation.name by the OpenAI-compatible path vLLM served.
OPERATIONS = (("/chat/completions", "chat"), ("/completions", "text_completion"),
              ("/embeddings", "embeddings"), ("/responses", "chat"))
#: The record's sampling parameters under their GenAI names.
SAMPLING = {"temperature": "gen_ai.request.temperature", "top_p": "gen_ai.request.top_p",
            "top_k": "gen_ai.request.top_k", "seed": "gen_ai.request.seed",
            "presence_penalty": "gen_ai.request.presence_penalty",
            "frequency_penalty": "gen_ai.request.frequency_penalty"}
#: Record fields copied as span attributes, under these names.
COPIED = {"gen_ai.request.model": "gen_ai.request.model",
          "gen_ai.usage.input_tokens": "gen_ai.usage.input_tokens",
          "gen_ai.usage.output_tokens": "gen_ai.usage.output_tokens",
          "gen_ai.response.id": "gen_ai.response.id", "max_tokens": "gen_ai.request.max_tokens",
          "http_method": "http.request.method", "http_path": "url.path",
          "status_code": "http.response.status_code", "client_ip": "client.address",
          "user_agent": "user_agent.original", "user": "user.id",
          "trail_id": "vllm_audit.trail_id", "event_id": "vllm_audit.event_id",
          "log_id": "vllm_audit.log_id", "seq": "vllm_audit.seq", "hash": "vllm_audit.hash",
          "tenant": "vllm_audit.tenant", "revision": "vllm_audit.revision",
          "state": "vllm_audit.state", "client_request_id": "vllm_audit.client_request_id"}


@dataclass
class SpanData:
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    #: From the record's traceparent: (trace id, parent span id, sampled flag); None: a root.
    parent: tuple[int, int, int] | None = None
    error: str = ""


def operation(path: str) -> str:
    for suffix, name in OPERATIONS:
        if path.endswith(suffix):
            return name
    return "generate_content"


def parent_of(traceparent: str) -> tuple[int, int, int] | None:
    parts = traceparent.split("-")
    if len(parts) < 4:
        return None
    try:
        return int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None


def _attribute(value: Any) -> Any:
    """OTLP attributes are scalars or homogeneous lists of scalars."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def span_of(record: dict[str, Any]) -> SpanData:
    op = operation(str(record.get("http_path") or ""))
    model = str(record.get("gen_ai.request.model") or record.get("model") or "")
    attributes: dict[str, Any] = {"gen_ai.operation.name": op, "gen_ai.provider.name": "vllm",
                                  "gen_ai.system": "vllm", "gen_ai.response.model": model}
    for name, target in COPIED.items():
        value = _attribute(record.get(name))
        if value not in (None, ""):
            attributes[target] = value
    finish = record.get("gen_ai.response.finish_reasons")
    if isinstance(finish, list) and finish:
        attributes["gen_ai.response.finish_reasons"] = [str(f) for f in finish]
    sampling = record.get("sampling")
    if isinstance(sampling, dict):
        for name, target in SAMPLING.items():
            value = _attribute(sampling.get(name))
            if value is not None and (name != "seed" or sampling.get("seeded")):
                attributes[target] = value
    signals = flagged(record)
    if signals:
        attributes["vllm_audit.content_signals"] = signals
    created = int(record.get("created_unix_ms") or record.get("timestamp_ms") or 0)
    finished = int(record.get("finished_unix_ms") or record.get("timestamp_ms") or created)
    error = str(record.get("error") or "")
    if not error and int(record.get("status_code") or 0) >= 500:
        error = f"HTTP {record['status_code']}"
    if error:
        attributes["error.type"] = error[:200]
    return SpanData(name=f"{op} {model}".strip(), start_ns=created * 1_000_000,
                    end_ns=max(finished, created) * 1_000_000, attributes=attributes,
                    parent=parent_of(str(record.get("traceparent") or "")), error=error)
