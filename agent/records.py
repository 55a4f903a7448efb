"""The JSON record published for each final trail (topic `<prefix>.requests`).

Field names are the proto's; every field is present (defaults included), enums are their
names, and 64-bit integers stay JSON numbers (protobuf's own JSON mapping turns them into
strings, which SIEM queries then have to cast). The conversion walks a per-type field plan
built once from the descriptor: `json_format.MessageToDict` cost ~60 µs a trail, the largest
share of the agent's ingest time at level summary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cache
from typing import Any

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from vllm_audit.v1 import query_pb2 as q

SCHEMA_VERSION = 1

_Convert = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


@cache
def _plan(descriptor: Descriptor) -> tuple[tuple[str, _Convert, bool], ...]:
    """(field name, value converter, repeated) for every field of a message type."""
    plan = []
    for field in descriptor.fields:
        convert: _Convert = _identity
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            convert = message_to_dict
        elif field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
            names = {v.number: v.name for v in field.enum_type.values}
            convert = names.get
        plan.append((field.name, convert, field.is_repeated))
    return tuple(plan)


def message_to_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, convert, repeated in _plan(message.DESCRIPTOR):
        value = getattr(message, name)
        out[name] = [convert(v) for v in value] if repeated else convert(value)
    return out


def trail_record(summary: q.TrailSummary) -> dict[str, Any]:
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
    record.update(message_to_dict(summary))
    return record


def encode(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)
