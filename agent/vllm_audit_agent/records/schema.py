"""The JSON Schema of the trail record as written to the record log and Kafka, derived from
the contract (TrailSummary's descriptor) plus the top-level fields records.py and the record
log add, so the schema cannot drift from the record.

`python -m vllm_audit_agent.records.schema > schema/trail-record.schema.json` writes it; a test proves
the committed file is what this produces and validates real records against it.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.model.content_signals import SIGNAL_NAMES
from vllm_audit_agent.model.record import NULL_WHEN_UNSET, SCHEMA_VERSION
from vllm_audit_agent.records.chain import RECORD_TYPE_REQUEST

_INTEGER = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
            FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
            FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64,
            FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_SFIXED64}
_UNSIGNED = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64,
             FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64}


#: Maps whose keys are a closed set: the content signals' counts are keyed by flag name.
MAP_KEYS: dict[str, tuple[str, ...]] = {
    "vllm_audit.v1.ContentSignals.prompt": SIGNAL_NAMES,
    "vllm_audit.v1.ContentSignals.output": SIGNAL_NAMES,
}


def _field_schema(field: Any) -> dict[str, Any]:
    schema: dict[str, Any]
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        # map<string, scalar>: an object, numbers kept numbers (record.py's `_plan`).
        value = _field_schema(message.fields_by_name["value"])
        names = MAP_KEYS.get(f"{field.containing_type.full_name}.{field.name}")
        return {"type": "object", "additionalProperties": value,
                **({"propertyNames": {"enum": list(names)}} if names else {})}
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        schema = _message_schema(field.message_type)
        if field.message_type.full_name in NULL_WHEN_UNSET:
            return {"oneOf": [{"type": "null"}, schema]}
    elif field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        schema = {"enum": [v.name for v in field.enum_type.values]}
    elif field.type in _INTEGER:
        schema = {"type": "integer"}
        if field.type in _UNSIGNED:
            schema["minimum"] = 0
    elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        schema = {"type": "number"}
    elif field.type == FieldDescriptor.TYPE_BOOL:
        schema = {"type": "boolean"}
    else:
        schema = {"type": "string"}
    if field.is_repeated:
        return {"type": "array", "items": schema}
    return schema


def _message_schema(descriptor: Descriptor | Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {f.name: _field_schema(f) for f in descriptor.fields},
        "required": [f.name for f in descriptor.fields],
        "additionalProperties": False,
    }


def trail_record_schema() -> dict[str, Any]:
    schema = _message_schema(q.TrailSummary.DESCRIPTOR)
    extra: dict[str, Any] = {
        "schema": {"const": SCHEMA_VERSION},
        # Added by the record log (records/log.py, chain.py): its place in the hash chain.
        "type": {"const": RECORD_TYPE_REQUEST},
        "recorded_unix_ms": {"type": "integer", "minimum": 0},
        "seq": {"type": "integer", "minimum": 1},
        "prev_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        # The record log's identity (records/identity.py): which log, and so which tree.
        "log_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "trail_id": {"type": "string", "minLength": 1},
        "event_id": {"type": "string", "pattern": "^.+/[0-9]+$"},
        "timestamp_ms": {"type": "integer"},
        "gen_ai.request.model": {"type": "string"},
        "gen_ai.usage.input_tokens": {"type": "integer", "minimum": 0},
        "gen_ai.usage.output_tokens": {"type": "integer", "minimum": 0},
        "gen_ai.response.finish_reasons": {"type": "array", "items": {"type": "string"}},
        "gen_ai.response.id": {"type": "string"},
        "engine_at_finish": {"oneOf": [{"type": "null"},
                                       _message_schema(pb.EngineStats.DESCRIPTOR)]},
        # The trail's GrammarCompiled and StructuredOutputStep events in protobuf's JSON
        # mapping (records.grammar_proof): what `vllm-audit replay` needs from a record.
        "grammar_events": {"type": "array", "items": {"type": "object"}},
        "grammar_events_omitted": {"type": "integer", "minimum": 0},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://vllm-audit.dev/schema/trail-record.v{SCHEMA_VERSION}.json",
        "title": "vllm-audit trail record (topic <prefix>.requests)",
        "type": "object",
        "properties": {**extra, **schema["properties"]},
        "required": [*extra, *schema["required"]],
        # Consumers may rely on the field set: a new field is a new schema version.
        "additionalProperties": False,
    }


def main() -> None:
    sys.stdout.write(orjson.dumps(trail_record_schema(), option=orjson.OPT_INDENT_2).decode()
                     + "\n")


if __name__ == "__main__":
    main()
