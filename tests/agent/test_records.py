"""The published record: every field present, enums by name, numbers as numbers."""

from __future__ import annotations

import orjson
from google.protobuf import json_format

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.model.record import encode, trail_record


def test_record_has_every_field_with_json_native_types() -> None:
    summary = q.TrailSummary(
        request_id="r1", engine_request_ids=["chatcmpl-r1-1a2b3c4d"],
        state=q.TRAIL_STATE_FINISHED, created_unix_ms=1_795_000_000_000, model="m",
        prompt_tokens=3, completion_tokens=5, latency_ms=12.5, audit_level=pb.AUDIT_LEVEL_FULL,
        structured_output=pb.StructuredOutputSummary(backend="xgrammar", steps=5,
                                                     allowed_tokens_max=900),
    )
    record = orjson.loads(encode(trail_record(summary)))
    # The same keys and values as protobuf's JSON mapping, but 64-bit integers as numbers.
    reference = json_format.MessageToDict(summary, preserving_proto_field_name=True,
                                          always_print_fields_with_no_presence=True)
    assert set(reference) <= set(record)
    assert record["created_unix_ms"] == 1_795_000_000_000
    assert reference["created_unix_ms"] == "1795000000000"
    assert record["state"] == "TRAIL_STATE_FINISHED"
    assert record["audit_level"] == "AUDIT_LEVEL_FULL"
    assert record["structured_output"]["allowed_tokens_max"] == 900
    assert record["structured_output"]["backend"] == "xgrammar"
    assert record["engine_request_ids"] == ["chatcmpl-r1-1a2b3c4d"]
    assert record["user"] == "" and record["client_disconnected"] is False
    assert record["gen_ai.usage.input_tokens"] == 3 and record["gen_ai.response.id"] == "r1"
    for key, value in reference.items():
        if isinstance(value, str) and value.isdigit():
            assert record[key] == int(value), key
        elif key != "structured_output":
            assert record[key] == value, key
