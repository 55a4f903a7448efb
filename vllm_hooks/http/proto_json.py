"""Contract messages as JSON-ready dicts whose 64-bit integers are numbers.

`json_format.MessageToDict` writes int64 and uint64 as strings (proto3's JSON mapping, for
JavaScript readers), so `"allowed_tokens_min": "1"` reached OpenAI's `usage` object beside the
plain numbers vLLM writes there. A count is a number: these dicts hold ints, as the agent's
records do ("64-bit integers as numbers").
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_INT64 = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
                    FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED64,
                    FieldDescriptor.TYPE_SFIXED64})


def message_dict(message: Message, with_defaults: bool = False) -> dict[str, Any]:
    """`message` with proto field names; every field when `with_defaults`."""
    out: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True,
        always_print_fields_with_no_presence=with_defaults)
    _numbers(out, message.DESCRIPTOR)
    return out


def _numbers(out: dict[str, Any], descriptor: Any) -> None:
    """Turns the 64-bit integers MessageToDict wrote as strings back into ints, in place.
    `descriptor`: the message's Descriptor (upb's or the pure-Python one: typed as Any)."""
    for field in descriptor.fields:
        value = out.get(field.name)
        if value is None:
            continue
        if field.type in _INT64:
            out[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in value if isinstance(value, list) else (value,):
                if isinstance(item, dict):
                    _numbers(item, field.message_type)
