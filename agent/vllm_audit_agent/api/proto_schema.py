"""JSON Schema (2020-12, as OpenAPI 3.1 uses) of a contract message in the form the management
API answers it: model/record.py's `message_to_dict` (proto field names, every field with its
default, only the member of a oneof that is set, enums by name, 64-bit integers as numbers,
maps as objects).

Derived from the message's descriptor, so the document describes what the code sends without
a hand-kept copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from vllm_audit_agent.model.record import NULL_WHEN_UNSET

_F = FieldDescriptor
_SCALARS: dict[int, dict[str, Any]] = {
    **{t: {"type": "integer"} for t in (
        _F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_SINT32,
        _F.TYPE_SINT64, _F.TYPE_FIXED32, _F.TYPE_FIXED64, _F.TYPE_SFIXED32, _F.TYPE_SFIXED64)},
    _F.TYPE_FLOAT: {"type": "number"},
    _F.TYPE_DOUBLE: {"type": "number"},
    _F.TYPE_BOOL: {"type": "boolean"},
    _F.TYPE_STRING: {"type": "string"},
    _F.TYPE_BYTES: {"type": "string"},
}


def ref(descriptor: Descriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    """A `$ref` to `descriptor`'s schema in `schemas` (components/schemas), adding it and the
    schemas of the messages it holds."""
    name = descriptor.full_name
    if name not in schemas:
        schemas[name] = {}  # taken before the fields: a message that holds itself ends here
        schemas[name] = message_schema(descriptor, schemas)
    return {"$ref": f"#/components/schemas/{name}"}


def message_schema(descriptor: Descriptor, schemas: dict[str, Any],
                   overrides: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The message's schema; `overrides`: fields rendered otherwise, by name."""
    overrides = overrides or {}
    oneof_members = {f.name for o in descriptor.oneofs for f in o.fields}
    properties = {f.name: overrides[f.name] if f.name in overrides else _field(f, schemas)
                  for f in descriptor.fields}
    return {
        "type": "object",
        "description": f"{descriptor.full_name} (the contract's message)",
        "properties": properties,
        "required": [name for name in properties if name not in oneof_members],
        "additionalProperties": False,
    }


def _field(field: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        return {"type": "object",
                "additionalProperties": _single(message.fields_by_name["value"], schemas)}
    single = _single(field, schemas)
    return {"type": "array", "items": single} if field.is_repeated else single


def _single(field: FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if field.type == _F.TYPE_MESSAGE and field.message_type is not None:
        if field.message_type.full_name in NULL_WHEN_UNSET:  # null when not set (record.py)
            return {"oneOf": [{"type": "null"}, ref(field.message_type, schemas)]}
        return ref(field.message_type, schemas)
    if field.type == _F.TYPE_ENUM and field.enum_type is not None:
        # an unknown number (a newer peer's value) is rendered null
        return {"enum": [*(v.name for v in field.enum_type.values), None]}
    return dict(_SCALARS[field.type])
