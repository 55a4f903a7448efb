"""Records as Elastic Common Schema (ECS 8.x) documents: a request is a web access event, a
finding an alert.

ECS has a field for who, from where, what URL and HTTP exchange, when and how it ended; the
GenAI fields keep their OpenTelemetry names as a custom `gen_ai.*` object (ECS adopts
OpenTelemetry's semantic conventions; Elastic's own GenAI integrations use these names), and
what neither has goes under `vllm_audit.*` (custom fields, ECS's advice: a vendor prefix).

REQUEST_FIELDS says where each request-record field goes: an ECS field (dotted path), or
(None, why it is left out).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any

from vllm_audit_agent.siem.signals import flagged

ECS_VERSION = "8.17.0"
CUSTOM = "vllm_audit"
#: ECS event.severity is a number; the findings' names ordered as OCSF's ids are.
SEVERITY = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}


def _custom(name: str) -> str:
    return f"{CUSTOM}.{name}"


#: Request-record field -> ECS field, or (None, why it is left out).
REQUEST_FIELDS: dict[str, str | tuple[None, str]] = {
    "schema": _custom("schema"),
    "type": (None, "event.kind says it (event for a request, alert for a finding)"),
    "recorded_unix_ms": "event.ingested",
    "seq": "event.sequence",
    "prev_hash": _custom("prev_hash"),
    "hash": "event.hash",
    "log_id": _custom("log_id"),
    "trail_id": "transaction.id",
    "event_id": "event.id",
    "timestamp_ms": "@timestamp",
    "gen_ai.request.model": "gen_ai.request.model",
    "gen_ai.usage.input_tokens": "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens": "gen_ai.usage.output_tokens",
    "gen_ai.response.finish_reasons": "gen_ai.response.finish_reasons",
    "gen_ai.response.id": "gen_ai.response.id",
    "engine_at_finish": _custom("engine_at_finish"),
    "grammar_events": (None, "the grammar proof for `vllm-audit replay`: the chained record "
                             "keeps it; it is no SIEM field and can be 256 KiB"),
    "grammar_events_omitted": _custom("grammar_events_omitted"),
    "request_id": _custom("request_id"),
    "engine_request_ids": _custom("engine_request_ids"),
    "state": _custom("state"),
    "created_unix_ms": "event.start",
    "finished_unix_ms": "event.end",
    "model": "gen_ai.request.model",
    "user": "user.name",
    "client_ip": "source.address",
    "status_code": "http.response.status_code",
    "auth_status": (None, "auth_decision's lower-case name, kept in the record for old readers"),
    "finish_reason": _custom("finish_reason"),
    "prompt_tokens": (None, "the same number as gen_ai.usage.input_tokens"),
    "completion_tokens": (None, "the same number as gen_ai.usage.output_tokens"),
    "latency_ms": "event.duration",
    "ttft_ms": _custom("ttft_ms"),
    "grammar_backend": _custom("grammar_backend"),
    "grammar_spec_type": _custom("grammar_spec_type"),
    "grammar_error": _custom("grammar_error"),
    "structured_output": _custom("structured_output"),
    "audit_level": _custom("audit_level"),
    "num_events": _custom("num_events"),
    "prompt": (None, "content stays in the chained record under its capture policy; the SIEM "
                     "copy carries its content signals, never the text"),
    "output": (None, "content stays in the chained record under its capture policy; the SIEM "
                     "copy carries its content signals, never the text"),
    "api_key_sha256": _custom("api_key_sha256"),
    "error": "error.message",
    "stream": _custom("stream"),
    "preemptions": _custom("preemptions"),
    "tenant": "organization.name",
    "client_disconnected": _custom("client_disconnected"),
    "client_request_id": "http.request.id",
    "revision": _custom("revision"),
    "finalised_by": _custom("finalised_by"),
    "incomplete": _custom("incomplete"),
    "source_ids": "service.node.name",
    "http_method": "http.request.method",
    "http_path": "url.path",
    "user_agent": "user_agent.original",
    "response_bytes": "http.response.bytes",
    "vllm_request_id": _custom("vllm_request_id"),
    "grammar_compile_ms": _custom("grammar_compile_ms"),
    "grammar_spec_sha256": _custom("grammar_spec_sha256"),
    "max_tokens": "gen_ai.request.max_tokens",
    "capture_policy": _custom("capture_policy"),
    "truncated_events": _custom("truncated_events"),
    "auth_decision": _custom("auth_decision"),
    "user_source": _custom("user_source"),
    "tenant_source": _custom("tenant_source"),
    "claimed_user": _custom("claimed_user"),
    "ignored_identity_headers": _custom("ignored_identity_headers"),
    "model_provenance": _custom("model_provenance"),
    "lora_adapter": _custom("lora_adapter"),
    "sampling": _custom("sampling"),
    "traceparent": "trace.id",
    "content_signals": _custom("content_signals"),
    "content_signals_unscanned_chars": _custom("content_signals_unscanned_chars"),
    "content": (None, "the sealed prompt and output (encrypted under a content key): evidence "
                      "for the log, no SIEM field; the copy carries the content signals"),
}


def iso(ms: Any) -> str:
    """RFC 3339 UTC with milliseconds, as ECS's date fields take."""
    when = dt.datetime.fromtimestamp(int(ms or 0) / 1000, tz=dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    """Sets a dotted path as nested objects (gen_ai.usage.input_tokens -> gen_ai{usage{…}})."""
    *parents, leaf = path.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


#: Fields copied as they are to the ECS field REQUEST_FIELDS names.
_VERBATIM = tuple(
    (name, target) for name, target in REQUEST_FIELDS.items()
    if isinstance(target, str) and (target.startswith(("gen_ai.", CUSTOM + ".")) or target in (
        "event.sequence", "event.hash", "event.id", "transaction.id", "user.name",
        "http.response.status_code", "organization.name", "http.request.id",
        "http.request.method", "url.path", "user_agent.original", "http.response.bytes")))


def request_document(record: dict[str, Any]) -> dict[str, Any]:
    """A request record as an ECS document (event.kind event, category web, type access)."""
    failed = int(record.get("status_code") or 0) >= 400 or bool(record.get("error"))
    signals = flagged(record)
    doc: dict[str, Any] = {
        "@timestamp": iso(record.get("timestamp_ms")),
        "ecs": {"version": ECS_VERSION},
        "event": {"kind": "event", "category": ["web"], "type": ["access"],
                  "action": "inference", "outcome": "failure" if failed else "success",
                  "dataset": "vllm_audit.requests", "module": "vllm_audit",
                  "start": iso(record.get("created_unix_ms")),
                  "end": iso(record.get("finished_unix_ms") or record.get("timestamp_ms")),
                  "ingested": iso(record.get("recorded_unix_ms")),
                  # ECS durations are nanoseconds.
                  "duration": int(float(record.get("latency_ms") or 0.0) * 1_000_000),
                  "risk_score": 50.0 if signals else 0.0},
        "service": {"name": "vllm", "node": {"name": ",".join(record.get("source_ids") or [])}},
    }
    for name, target in _VERBATIM:
        if name in record:
            _put(doc, target, record[name])
    address = str(record.get("client_ip") or "")
    if address:
        doc["source"] = {"address": address, **({"ip": address} if _is_ip(address) else {})}
        doc["related"] = {"ip": [address]} if _is_ip(address) else {}
    if record.get("user"):
        doc.setdefault("related", {})["user"] = [record["user"]]
    if record.get("error"):
        doc["error"] = {"message": record["error"]}
    parts = str(record.get("traceparent") or "").split("-")
    if len(parts) >= 4:
        doc["trace"] = {"id": parts[1]}
        doc[CUSTOM]["parent_span_id"] = parts[2]
    if signals:
        doc["tags"] = [f"content_signal:{s}" for s in signals]
    return doc


def finding_document(record: dict[str, Any]) -> dict[str, Any]:
    """A finding record as an ECS alert: rule.*, the subject in related.*, the window."""
    severity = str(record.get("severity") or "low")
    subject = record.get("subject") or {}
    kind, value = str(subject.get("kind") or ""), str(subject.get("value") or "")
    doc: dict[str, Any] = {
        "@timestamp": iso(record.get("window_end_ms") or record.get("recorded_unix_ms")),
        "ecs": {"version": ECS_VERSION},
        "event": {"kind": "alert", "category": ["intrusion_detection"], "type": ["info"],
                  "action": str(record.get("rule") or ""), "dataset": "vllm_audit.findings",
                  "module": "vllm_audit", "id": str(record.get("finding_id") or ""),
                  "severity": SEVERITY.get(severity, 0),
                  "start": iso(record.get("window_start_ms")),
                  "end": iso(record.get("window_end_ms")),
                  "ingested": iso(record.get("recorded_unix_ms")),
                  "sequence": record.get("seq"), "hash": record.get("hash")},
        "rule": {"name": str(record.get("rule") or ""),
                 "ruleset": str(record.get("ruleset") or ""),
                 "description": str(record.get("summary") or "")},
        "message": str(record.get("summary") or ""),
        CUSTOM: {"finding": {key: record.get(key) for key in (
            "severity", "subject", "tenant", "window_start_ms", "window_end_ms", "observed",
            "threshold", "evidence_trail_ids", "evidence_count", "scope")},
            "log_id": record.get("log_id"), "prev_hash": record.get("prev_hash")},
    }
    related = {"user": "user", "client_ip": "ip", "api_key": "hash"}.get(kind)
    if related and value:
        doc["related"] = {related: [value]}
    if kind == "user":
        doc["user"] = {"name": value}
    if kind == "client_ip" and _is_ip(value):
        doc["source"] = {"ip": value}
    if kind == "tenant" or record.get("tenant"):
        doc["organization"] = {"name": value if kind == "tenant" else str(record["tenant"])}
    return doc
