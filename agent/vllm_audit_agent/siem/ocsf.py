"""Records as OCSF 1.7.0 events: a request is an API Activity (class 6003), a finding a
Detection Finding (class 2004).

1.7.0 is the newest schema `pydantic-ocsf` ships (the tests validate against it offline). It
has no AI profile yet, so the GenAI fields (model, token usage, finish reasons, content
signals) go to `unmapped` under their record names, as OCSF says a source's fields without
a class attribute do. The `trace` profile's object is not in the compiled class either: the
caller's traceparent goes to `unmapped` too (trace_id, parent_span_id), beside the record's
own `traceparent`.

REQUEST_FIELDS says where each request-record field goes: an OCSF attribute path, or
`unmapped`, or (None, why it is left out).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from vllm_audit_agent.siem.signals import flagged

OCSF_VERSION = "1.7.0"
PRODUCT = {"name": "vllm-audit", "vendor_name": "vllm-audit"}
API_ACTIVITY = 6003
DETECTION_FINDING = 2004
#: OCSF severity_id: 1 informational, 2 low, 3 medium, 4 high, 5 critical.
SEVERITY_IDS = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
UNMAPPED = "unmapped"

#: Request-record field -> OCSF attribute (dotted path), "unmapped" (kept under its own name
#: in `unmapped`), or (None, why it is left out). Checked against the record's schema.
REQUEST_FIELDS: dict[str, str | tuple[None, str]] = {
    "schema": "metadata.log_version",
    "type": (None, "the class says it (API Activity); findings are another class"),
    "recorded_unix_ms": "metadata.logged_time",
    "seq": "metadata.sequence",
    "prev_hash": UNMAPPED,
    "hash": "metadata.uid",
    "log_id": "metadata.log_name",
    "trail_id": "metadata.correlation_uid",
    "event_id": "metadata.original_event_uid",
    "timestamp_ms": "time",
    "gen_ai.request.model": UNMAPPED,
    "gen_ai.usage.input_tokens": UNMAPPED,
    "gen_ai.usage.output_tokens": UNMAPPED,
    "gen_ai.response.finish_reasons": UNMAPPED,
    "gen_ai.response.id": UNMAPPED,
    "engine_at_finish": UNMAPPED,
    "grammar_events": (None, "the grammar proof for `vllm-audit replay`: the chained record "
                             "keeps it; it is no SIEM field and can be 256 KiB"),
    "grammar_events_omitted": UNMAPPED,
    "request_id": "api.request.uid",
    "engine_request_ids": UNMAPPED,
    "state": UNMAPPED,
    "created_unix_ms": "start_time",
    "finished_unix_ms": "end_time",
    "model": "resources.name",
    "user": "actor.user.name",
    "client_ip": "src_endpoint.ip",
    "status_code": "http_response.code",
    "auth_status": (None, "auth_decision's lower-case name, kept in the record for old readers"),
    "finish_reason": UNMAPPED,
    "prompt_tokens": (None, "the same number as gen_ai.usage.input_tokens (unmapped)"),
    "completion_tokens": (None, "the same number as gen_ai.usage.output_tokens (unmapped)"),
    "latency_ms": "duration",
    "ttft_ms": UNMAPPED,
    "grammar_backend": UNMAPPED,
    "grammar_spec_type": UNMAPPED,
    "grammar_error": UNMAPPED,
    "structured_output": UNMAPPED,
    "audit_level": UNMAPPED,
    "num_events": UNMAPPED,
    "prompt": (None, "content stays in the chained record under its capture policy; the SIEM "
                     "copy carries its content signals, never the text"),
    "output": (None, "content stays in the chained record under its capture policy; the SIEM "
                     "copy carries its content signals, never the text"),
    "api_key_sha256": "actor.user.credential_uid",
    "error": "status_detail",
    "stream": UNMAPPED,
    "preemptions": UNMAPPED,
    "tenant": "actor.user.org.name",
    "client_disconnected": UNMAPPED,
    "client_request_id": "http_request.uid",
    "revision": UNMAPPED,
    "finalised_by": UNMAPPED,
    "incomplete": UNMAPPED,
    "source_ids": "dst_endpoint.uid",
    "http_method": "http_request.http_method",
    "http_path": "http_request.url.path",
    "user_agent": "http_request.user_agent",
    "response_bytes": "http_response.length",
    "vllm_request_id": "api.response.message",
    "grammar_compile_ms": UNMAPPED,
    "grammar_spec_sha256": UNMAPPED,
    "max_tokens": UNMAPPED,
    "capture_policy": UNMAPPED,
    "truncated_events": UNMAPPED,
    "auth_decision": UNMAPPED,
    "user_source": UNMAPPED,
    "tenant_source": UNMAPPED,
    "claimed_user": UNMAPPED,
    "ignored_identity_headers": UNMAPPED,
    "model_provenance": "resources.version",
    "lora_adapter": UNMAPPED,
    "sampling": UNMAPPED,
    "traceparent": UNMAPPED,
    "content_signals": UNMAPPED,
    "content_signals_unscanned_chars": UNMAPPED,
    "content": (None, "the sealed prompt and output (encrypted under a content key): evidence "
                      "for the log, no SIEM field; the copy carries the content signals"),
}

#: The OCSF attributes (besides `unmapped`) a request fills, from REQUEST_FIELDS: what
#: `request_event` writes is checked against these by the tests.
UNMAPPED_FIELDS = tuple(f for f, target in REQUEST_FIELDS.items() if target == UNMAPPED)


def _ip_endpoint(address: str) -> dict[str, Any]:
    """An endpoint by address: `ip` when it is one, else `uid` (an address under an hmac
    capture policy is a pseudonym, no IP)."""
    if not address:
        return {}
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return {"uid": address}
    return {"ip": address}


def _trace(traceparent: str) -> dict[str, str]:
    parts = traceparent.split("-")
    if len(parts) < 4:
        return {}
    return {"trace_id": parts[1], "parent_span_id": parts[2]}


def _metadata(record: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {"version": OCSF_VERSION, "product": PRODUCT,
                            "log_version": str(record.get("schema", "")),
                            "log_name": str(record.get("log_id") or ""),
                            "uid": str(record.get("hash") or record.get("event_id") or "")}
    if "seq" in record:
        meta["sequence"] = int(record["seq"])
    if record.get("recorded_unix_ms"):
        meta["logged_time"] = int(record["recorded_unix_ms"])
    if record.get("trail_id"):
        meta["correlation_uid"] = str(record["trail_id"])
    if record.get("event_id"):
        meta["original_event_uid"] = str(record["event_id"])
    return meta


def _failed(record: dict[str, Any]) -> bool:
    return int(record.get("status_code") or 0) >= 400 or bool(record.get("error")) or \
        record.get("state") in ("TRAIL_STATE_FAILED", "TRAIL_STATE_ABORTED")


def request_event(record: dict[str, Any]) -> dict[str, Any]:
    """A request record as an OCSF API Activity (Create: an inference call makes a completion)."""
    signals = flagged(record)
    user: dict[str, Any] = {"name": str(record.get("user") or "")}
    if record.get("api_key_sha256"):
        user["credential_uid"] = str(record["api_key_sha256"])
    if record.get("tenant"):
        user["org"] = {"name": str(record["tenant"])}
    status_code = int(record.get("status_code") or 0)
    event: dict[str, Any] = {
        "class_uid": API_ACTIVITY, "category_uid": 6, "activity_id": 1,
        "type_uid": API_ACTIVITY * 100 + 1, "activity_name": "Create",
        "time": int(record.get("timestamp_ms") or 0),
        "start_time": int(record.get("created_unix_ms") or 0),
        "end_time": int(record.get("finished_unix_ms") or 0),
        "duration": int(float(record.get("latency_ms") or 0.0)),
        # Flagged content raises it: a SIEM's first filter is on severity.
        "severity_id": 3 if signals else 1,
        "severity": "Medium" if signals else "Informational",
        "status_id": 2 if _failed(record) else 1,
        "status": "Failure" if _failed(record) else "Success",
        "status_code": str(status_code),
        "status_detail": str(record.get("error") or ""),
        "message": f"{record.get('http_method') or 'POST'} {record.get('http_path') or ''} "
                   f"model={record.get('model') or ''} user={record.get('user') or ''}"
                   + (f" flagged={','.join(signals)}" if signals else ""),
        "metadata": _metadata(record),
        "actor": {"user": user},
        "api": {"operation": str(record.get("http_path") or "inference"),
                "request": {"uid": str(record.get("request_id") or record.get("trail_id") or "")},
                "response": {"code": status_code,
                             "message": str(record.get("vllm_request_id") or "")},
                "service": {"name": "vllm"}},
        "src_endpoint": _ip_endpoint(str(record.get("client_ip") or "")) or {"uid": ""},
        "dst_endpoint": {"uid": ",".join(record.get("source_ids") or []), "svc_name": "vllm"},
        # Only what the request had: an offline (engine-only) record has no HTTP half, and
        # OCSF's http_method is one of the method names, never "".
        "http_request": {key: value for key, value in (
            ("http_method", str(record.get("http_method") or "")),
            ("url", {"path": str(record["http_path"])} if record.get("http_path") else ""),
            ("user_agent", str(record.get("user_agent") or "")),
            ("uid", str(record.get("client_request_id") or ""))) if value},
        "http_response": {"code": status_code, "length": int(record.get("response_bytes") or 0)},
        "resources": [_model_resource(record)],
        "unmapped": {name: record[name] for name in UNMAPPED_FIELDS if name in record},
    }
    event["unmapped"].update(_trace(str(record.get("traceparent") or "")))
    return event


def _model_resource(record: dict[str, Any]) -> dict[str, Any]:
    provenance = record.get("model_provenance") or {}
    resource = {"type": "ai_model", "name": str(record.get("model") or "")}
    digest = provenance.get("weights_sha256") if isinstance(provenance, dict) else ""
    if digest:
        resource["uid"] = str(digest)
    revision = provenance.get("revision") if isinstance(provenance, dict) else ""
    if revision:
        resource["version"] = str(revision)
    return resource


def finding_event(record: dict[str, Any]) -> dict[str, Any]:
    """A finding record as an OCSF Detection Finding (activity Create: a new finding)."""
    severity = str(record.get("severity") or "low")
    subject = record.get("subject") or {}
    kind, value = str(subject.get("kind") or ""), str(subject.get("value") or "")
    evidence = [str(t) for t in record.get("evidence_trail_ids") or []]
    event: dict[str, Any] = {
        "class_uid": DETECTION_FINDING, "category_uid": 2, "activity_id": 1,
        "type_uid": DETECTION_FINDING * 100 + 1, "activity_name": "Create",
        "time": int(record.get("window_end_ms") or record.get("recorded_unix_ms") or 0),
        "start_time": int(record.get("window_start_ms") or 0),
        "end_time": int(record.get("window_end_ms") or 0),
        "severity_id": SEVERITY_IDS.get(severity, 99),
        "severity": severity.capitalize(),
        "status_id": 1, "status": "New",
        "message": str(record.get("summary") or ""),
        "metadata": _metadata({**record, "trail_id": None}),
        "finding_info": {
            "uid": str(record.get("finding_id") or ""),
            "title": str(record.get("rule") or ""),
            "desc": str(record.get("summary") or ""),
            "first_seen_time": int(record.get("window_start_ms") or 0),
            "last_seen_time": int(record.get("window_end_ms") or 0),
            # type_id 1: a rule (the rule engine's named, versioned rules).
            "analytic": {"name": str(record.get("rule") or ""), "type_id": 1,
                         "version": str(record.get("ruleset") or "")},
            "related_events_count": int(record.get("evidence_count") or 0),
            "types": [str(record.get("scope") or "")],
        },
        "resources": [{"type": kind, "name": value}],
        "unmapped": {"subject": {"kind": kind, "value": value},
                     "tenant": str(record.get("tenant") or ""),
                     "observed": record.get("observed"), "threshold": record.get("threshold"),
                     "evidence_trail_ids": evidence, "scope": record.get("scope"),
                     "prev_hash": record.get("prev_hash")},
    }
    return event
