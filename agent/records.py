"""The JSON record published for each final trail (topic `<prefix>.requests`)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from google.protobuf import json_format
from vllm_audit.v1 import query_pb2 as q

SCHEMA_VERSION = 1


def trail_record(summary: q.TrailSummary) -> dict[str, Any]:
    body = json_format.MessageToDict(summary, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        # Stable across re-publication (at-least-once delivery): consumers de-duplicate on it.
        "event_id": hashlib.sha256(
            f"{summary.request_id}|{','.join(summary.engine_request_ids)}".encode()
        ).hexdigest(),
        "timestamp_ms": summary.finished_unix_ms or summary.created_unix_ms,
        # OpenTelemetry GenAI semantic-convention names where one exists.
        "gen_ai.request.model": summary.model,
        "gen_ai.usage.input_tokens": summary.prompt_tokens,
        "gen_ai.usage.output_tokens": summary.completion_tokens,
        "gen_ai.response.finish_reasons": [summary.finish_reason] if summary.finish_reason else [],
        "gen_ai.response.id": summary.request_id,
    }
    record.update(body)
    return record


def encode(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)
