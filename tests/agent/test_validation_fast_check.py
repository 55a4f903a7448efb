"""The generated fast check of each event body never clears a body the field-by-field repair
would change. Bad values are made from the contract's descriptors (every field of every body
kind), not from validation's own rule tables, so a field the tables miss shows up here."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.model import validation

BODY_FIELDS = [f for f in pb.Event.DESCRIPTOR.oneofs_by_name["body"].fields
               if f.message_type is not None]
INTS = (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_SFIXED64)
FLOATS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)


def bad_values(field: FieldDescriptor) -> Iterator[Any]:
    if field.is_repeated:
        if field.type == FieldDescriptor.TYPE_STRING:
            yield ["x"] * (validation.MAX_LIST_ITEMS + 1)
            yield ["y" * (validation.MAX_STRING_BYTES + 1)]
        return
    if field.type in INTS:
        yield -1
    elif field.type in FLOATS:
        yield from (math.nan, -1.0, math.inf, -math.inf, 2.0, validation.MAX_DURATION_MS * 2)
    elif field.type == FieldDescriptor.TYPE_STRING:
        yield "z" * (validation.MAX_STRING_BYTES + 1)
        yield "\u20ac" * (validation.MAX_TEXT_BYTES // 3 + 1)  # 3 UTF-8 bytes per character
    elif field.type == FieldDescriptor.TYPE_ENUM:
        yield 999


def cases() -> Iterator[tuple[str, str, Any]]:
    for body in BODY_FIELDS:
        for field in body.message_type.fields:
            for value in bad_values(field):
                yield body.name, field.name, value


def event_with(kind: str, field: str, value: Any) -> pb.Event:
    event = pb.Event(request_id="r", time_unix_nano=1)
    body = getattr(event, kind)
    body.SetInParent()
    target = getattr(body, field)
    if isinstance(value, list):
        target.extend(value)
    else:
        setattr(body, field, value)
    return event


@pytest.mark.parametrize(("kind", "field", "value"), list(cases()),
                         ids=lambda v: str(v)[:20])
def test_fast_check_never_clears_a_body_the_repair_changes(kind: str, field: str, value: Any
                                                           ) -> None:
    event = event_with(kind, field, value)
    cleared = validation._FAST[kind](event, event.request_id)
    repaired = pb.Event()
    repaired.CopyFrom(event)
    changed = validation._repair_event(repaired, Counter())
    if changed:
        assert not cleared, f"{kind}.{field}={str(value)[:40]!r} needs a repair the check missed"
    # Whatever the fast check clears is stored as sent.
    if cleared:
        assert repaired == event


@pytest.mark.parametrize("kind", [f.name for f in BODY_FIELDS])
def test_fast_check_clears_a_plain_body(kind: str) -> None:
    event = pb.Event(request_id="r", time_unix_nano=1)
    getattr(event, kind).SetInParent()
    assert validation._FAST[kind](event, event.request_id) == (kind != "custom")


def test_a_bad_value_in_a_batch_is_repaired_and_counted() -> None:
    batch = pb.Batch(source_id="s", seq=1, events=[
        event_with("lifecycle", "num_prompt_tokens", -5),
        event_with("http", "latency_ms", math.nan),
        event_with("lifecycle", "phase", 77),
    ])
    verdict = validation.validate(batch, 1 << 20)
    assert not verdict.refusal
    assert verdict.clamped == Counter({"RequestLifecycle.num_prompt_tokens": 1,
                                       "HttpRequest.latency_ms": 1,
                                       "RequestLifecycle.phase": 1})
    assert [e.truncated for e in batch.events] == [True, True, True]
    assert batch.events[0].lifecycle.num_prompt_tokens == 0
    assert batch.events[2].lifecycle.phase == 0
    # What applies the batch reads the repaired events, with their kinds.
    assert verdict.events is not None
    assert verdict.events.kinds == ["lifecycle", "http", "lifecycle"]
    assert verdict.events.events[0].lifecycle.num_prompt_tokens == 0


def test_events_without_body_are_dropped_from_what_is_applied() -> None:
    batch = pb.Batch(source_id="s", seq=1, events=[
        pb.Event(request_id="a"), event_with("lifecycle", "max_tokens", 3), pb.Event()])
    verdict = validation.validate(batch, 1 << 20)
    assert verdict.dropped_events == 2
    assert verdict.events is not None
    assert verdict.events.kinds == ["lifecycle"]
    assert [e.lifecycle.max_tokens for e in verdict.events.events] == [3]
    assert len(batch.events) == 1


@pytest.mark.parametrize("kind", [f.name for f in BODY_FIELDS])
@pytest.mark.parametrize("bad", ["time", "request_id"])
def test_fast_check_never_clears_an_event_whose_own_fields_need_a_repair(kind: str,
                                                                         bad: str) -> None:
    event = pb.Event(request_id="r", time_unix_nano=1)
    getattr(event, kind).SetInParent()
    if bad == "time":
        event.time_unix_nano = -5
    else:
        event.request_id = "\u20ac" * validation.MAX_STRING_BYTES
    assert not validation._FAST[kind](event, event.request_id)
    repaired = pb.Event()
    repaired.CopyFrom(event)
    assert validation._repair_event(repaired, Counter())
