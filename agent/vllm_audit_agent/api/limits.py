"""The documented maximum of every query and control parameter, checked once for both
transports, and what an access record keeps of a request.

A caller with a valid token must not be able to make the agent store (or scan) an arbitrary
amount of data: a 3 MiB `user` filter used to become a 3 MiB access record. Every string field
of a request has a byte limit (`MAX_BYTES`, else `DEFAULT_MAX_BYTES`); a larger one is refused
with INVALID_ARGUMENT (HTTP 400) naming the field, its size and the limit. `page_size` is at
most MAX_PAGE_SIZE (larger is refused, not silently cut). An access record keeps each string
field up to RECORDED_MAX_BYTES; beyond that (only possible for a refused request) it keeps the
field's size and SHA-256, so the record stays small and still proves what was sent.
"""

from __future__ import annotations

import hashlib
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from vllm_audit_agent.api.errors import ApiError

#: Bytes of any string parameter without a limit of its own (model, user, tenant, ids, …).
DEFAULT_MAX_BYTES = 256
#: Fields with a limit of their own.
MAX_BYTES = {
    "page_token": 256,       # the agent's are ~48 characters, a fleet's ~64 + its event id
    "confirm": 64,
    "finish_reason": 64,
    "grammar_backend": 64,
}
#: Trails per ListTrails page, at most (larger is refused: INVALID_ARGUMENT).
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: Bytes of a string an access record keeps as it was sent.
RECORDED_MAX_BYTES = 256

_STRING = FieldDescriptor.TYPE_STRING


def check(request: Message) -> None:
    """Raises ApiError(INVALID_ARGUMENT) naming the first parameter over its limit."""
    for field, value in request.ListFields():
        if field.type == _STRING and not field.is_repeated:
            size = len(value.encode())
            limit = MAX_BYTES.get(field.name, DEFAULT_MAX_BYTES)
            if size > limit:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{field.name} is {size} bytes; at most {limit} are accepted")
        elif field.name == "page_size" and not 0 <= value <= MAX_PAGE_SIZE:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"page_size must be between 0 (default {DEFAULT_PAGE_SIZE}) and "
                           f"{MAX_PAGE_SIZE}, got {value}")


def recorded_details(request: object) -> dict[str, Any]:
    """What an access record keeps of a request: its fields as protobuf's JSON mapping, each
    string up to RECORDED_MAX_BYTES, a longer one as its size and SHA-256."""
    if not isinstance(request, Message):
        return {}
    return capped(json_format.MessageToDict(request, preserving_proto_field_name=True))


def capped(details: dict[str, Any]) -> dict[str, Any]:
    """`details` with each string over RECORDED_MAX_BYTES as its size and SHA-256."""
    out: dict[str, Any] = {}
    for name, value in details.items():
        raw = value.encode() if isinstance(value, str) else b""
        out[name] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()} \
            if len(raw) > RECORDED_MAX_BYTES else value
    return out
