"""Cutting one oversize event down to a byte budget (sender thread only, a rare path).

An event larger than the per-batch byte cap could never be sent; resending it forever would
block every event behind it. Its largest variable-length fields (an HTTP prompt, output or
error, a step's accepted tokens, any other string a client chose) are cut, largest first,
until the event fits, and `Event.truncated` is set so the trail says so. A step's allowed-token
set goes first and whole (part of a set would be a wrong set): the step is marked
`allowed_set_truncated`. The request id is never cut: it is the key that joins the trail.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from vllm_audit.v1 import events_pb2 as pb

#: Cuts per event before giving up; each cut removes at least the measured excess of the
#: largest field, so a handful always suffices unless no cuttable field is left.
_MAX_CUTS = 16
#: Extra bytes removed per cut so that a shrinking length prefix (varint) cannot leave the
#: event a few bytes over its budget.
_SLACK = 16
_REPEATED_INTS = frozenset({FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64,
                            FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64})


def _varint_len(value: int) -> int:
    if value < 0:
        return 10  # negative int32/int64 are sign-extended to 64 bits on the wire
    n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


def _field_bytes(field: FieldDescriptor, value: object) -> int:
    """Wire bytes of a cuttable field's payload; 0 for fields that are not cut."""
    if field.is_repeated:
        if field.cpp_type in _REPEATED_INTS:
            return sum(_varint_len(v) for v in cast("Sequence[int]", value))
        return 0
    if field.type == FieldDescriptor.TYPE_STRING:
        return len(cast(str, value).encode("utf-8"))
    if field.type == FieldDescriptor.TYPE_BYTES:
        return len(cast(bytes, value))
    return 0


def _cut(body: Message, field: FieldDescriptor, value: object, size: int, keep: int) -> None:
    """Keeps about `keep` of the field's `size` wire bytes."""
    name = field.name
    if field.is_repeated:
        items = len(cast("Sequence[int]", value))
        keep_items = min(items - 1, items * keep // size) if size else 0
        del getattr(body, name)[max(0, keep_items):]
    elif field.type == FieldDescriptor.TYPE_STRING:
        # Cut on bytes; a UTF-8 sequence split at the end is dropped, never mangled.
        cut = cast(str, value).encode("utf-8")[:keep]
        setattr(body, name, cut.decode("utf-8", errors="ignore"))
    else:
        setattr(body, name, cast(bytes, value)[:keep])


def truncate_to_fit(event: pb.Event, max_bytes: int) -> bool:
    """Cuts `event` in place until it serialises to at most `max_bytes`; marks it truncated.

    Returns False when it cannot fit (nothing cuttable is left): the caller drops and counts it.
    """
    event.truncated = True
    which = event.WhichOneof("body")
    body: Message | None = getattr(event, which) if which else None
    if which == "so_step" and event.so_step.HasField("allowed_set") and (
            event.ByteSize() > max_bytes):
        event.so_step.ClearField("allowed_set")
        event.so_step.allowed_set_truncated = True
    if which == "so_steps":
        return _truncate_columns(event, max_bytes)
    for _ in range(_MAX_CUTS):
        size = event.ByteSize()
        if size <= max_bytes:
            return True
        if body is None:
            return False
        largest: tuple[int, FieldDescriptor, object] | None = None
        for field, value in body.ListFields():
            n = _field_bytes(field, value)
            if n and (largest is None or n > largest[0]):
                largest = (n, field, value)
        if largest is None:
            return False
        n, field, value = largest
        _cut(body, field, value, n, max(0, n - (size - max_bytes) - _SLACK))
    return event.ByteSize() <= max_bytes


def _truncate_columns(event: pb.Event, max_bytes: int) -> bool:
    """Steps as columns lose their allowed sets (each step marked allowed_set_truncated) and
    nothing else: a column cut short would no longer line up with the others. The sender
    cuts columns into messages of a quarter of a batch, so this is a last resort."""
    cols = event.so_steps
    if cols.allowed_sets and event.ByteSize() > max_bytes:
        del cols.allowed_sets[:]
        del cols.allowed_set_truncated[:]
        cols.allowed_set_truncated.extend([True] * len(cols.step))
    return event.ByteSize() <= max_bytes
