"""Every field the hook captures reaches the record or is excluded on purpose, and every
record matches the JSON Schema that ships in schema/.

Fields were captured and silently dropped on the way to the record (user agent, bytes,
method/path, compile time, spec hash, max_tokens, the vLLM request id); FIELD_MAP is the one
place that decides, and these tests fail when the contract gains a field without a decision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.model.record import FIELD_MAP, message_to_dict, record_from_fields, trail_record
from vllm_audit_agent.model.trail import from_record
from vllm_audit_agent.records.chain import GENESIS_HASH, RECORD_TYPE_REQUEST, seal
from vllm_audit_agent.records.schema import trail_record_schema
from vllm_audit_agent.trails.completeness import missing_halves
from vllm_audit_agent.trails.store import Trail, TrailStore

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "schema" / "trail-record.schema.json"
MESSAGES: dict[str, Any] = {"HttpRequest": pb.HttpRequest, "RequestLifecycle": pb.RequestLifecycle,
                            "GrammarCompiled": pb.GrammarCompiled, "Event": pb.Event,
                            "Batch": pb.Batch}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_field_is_mapped_or_excluded_with_a_reason(name: str) -> None:
    fields = {f.name for f in MESSAGES[name].DESCRIPTOR.fields}
    decided = set(FIELD_MAP[name])
    assert fields - decided == set(), f"{name}: no decision for {sorted(fields - decided)}"
    assert decided - fields == set(), f"{name}: FIELD_MAP names unknown {sorted(decided - fields)}"
    summary_fields = {f.name for f in q.TrailSummary.DESCRIPTOR.fields}
    for field, target in FIELD_MAP[name].items():
        if isinstance(target, tuple):
            assert target[0] is None and len(target[1]) > 10, f"{name}.{field}: give a reason"
        else:
            assert target in summary_fields, f"{name}.{field} -> unknown {target}"


def _distinct_value(field: FieldDescriptor, n: int) -> Any:
    if field.message_type is pb.ContentSignals.DESCRIPTOR:
        return pb.ContentSignals(ruleset=f"v{n}-ruleset", prompt={"sql_injection": n},
                                 output={"pii_email": n + 1})
    if field.type == FieldDescriptor.TYPE_STRING:
        return f"v{n}-{field.name}"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return float(n) + 0.5
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number  # defined and not the default
    if field.is_repeated:
        return [f"v{n}-{field.name}"]
    return n


def _recorded(message: Message, field: str) -> Any:
    """A field's value as the record writes it (enums by name, lists as lists)."""
    value = getattr(message, field)
    descriptor = message.DESCRIPTOR.fields_by_name[field]
    if descriptor.type == FieldDescriptor.TYPE_ENUM:
        return descriptor.enum_type.values_by_number[value].name
    if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
        return message_to_dict(value)
    return list(value) if descriptor.is_repeated else value


def _filled(message: type[Message], skip: tuple[str, ...] = ()) -> Message:
    values = {f.name: _distinct_value(f, i + 7) for i, f in enumerate(message.DESCRIPTOR.fields)
              if f.name not in skip}
    return message(**values)


def _store() -> tuple[TrailStore, list[Trail]]:
    final: list[Trail] = []
    return TrailStore(10, 100, 30.0, final.append), final


def test_every_mapped_http_field_reaches_the_record() -> None:
    store, final = _store()
    http = _filled(pb.HttpRequest, skip=("status_code",))
    assert isinstance(http, pb.HttpRequest)
    http.status_code = 401  # refused by vLLM: no engine half, the trail is complete
    store.apply(pb.Batch(source_id="host:1:2", seq=1, events=[
        pb.Event(time_unix_nano=10**18, request_id="t1", http=http)]), segment=1)
    (trail,) = final
    record = trail_record(trail.summary)
    for field, target in FIELD_MAP["HttpRequest"].items():
        if isinstance(target, str):
            assert record[target] == _recorded(http, field), f"HttpRequest.{field} -> {target}"
    assert record["source_ids"] == ["host:1:2"]


def test_every_mapped_engine_field_reaches_the_record() -> None:
    store, final = _store()
    rid = "0-1a2b3c4d"  # offline: the engine half alone completes it
    grammar = _filled(pb.GrammarCompiled)
    lifecycle = pb.RequestLifecycle(phase=pb.LIFECYCLE_PHASE_FINISHED, num_prompt_tokens=11,
                                    num_output_tokens=13, finish_reason="stop",
                                    status="FINISHED_STOPPED", max_tokens=17)
    # The ADDED event carries what model served and how (provenance, adapter, sampling).
    added = pb.RequestLifecycle(phase=pb.LIFECYCLE_PHASE_ADDED, num_prompt_tokens=11,
                                max_tokens=17, provenance=_filled(pb.ModelProvenance),
                                lora_adapter=_filled(pb.LoraAdapter),
                                sampling=_filled(pb.SamplingParameters))
    store.apply(pb.Batch(source_id="s", seq=1, events=[
        pb.Event(time_unix_nano=10**18, request_id=rid, lifecycle=added),
        pb.Event(time_unix_nano=10**18, request_id=rid, grammar_compiled=grammar),
        pb.Event(time_unix_nano=10**18, request_id=rid, lifecycle=lifecycle, truncated=True),
    ]), segment=1)
    (trail,) = final
    record = trail_record(trail.summary)
    for message, value in (("GrammarCompiled", grammar), ("RequestLifecycle", lifecycle)):
        for field, target in FIELD_MAP[message].items():
            if not isinstance(target, str):
                continue
            if value.DESCRIPTOR.fields_by_name[field].message_type is not None:
                want = message_to_dict(getattr(added, field))
                assert want != message_to_dict(type(getattr(added, field))())
            else:
                want = getattr(value, field)
            assert record[target] == want, f"{message}.{field} -> {target}"
    assert record["truncated_events"] == 1
    # A record read back at start (a forced one) gives the same fields again.
    assert from_record(record).fields() == trail.fields()


def test_the_committed_schema_is_the_one_the_contract_gives() -> None:
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == trail_record_schema(), \
        "schema/trail-record.schema.json is stale: python -m vllm_audit_agent.records.schema > it"


def test_records_validate_against_the_schema_and_it_rejects_drift() -> None:
    store, final = _store()
    store.apply(pb.Batch(source_id="s", seq=1, events=[
        pb.Event(time_unix_nano=10**18, request_id="0-1a2b3c4d", lifecycle=pb.RequestLifecycle(
            phase=pb.LIFECYCLE_PHASE_FINISHED, finish_reason="stop"))]), segment=1)
    record = {**trail_record(final[0].summary), "type": RECORD_TYPE_REQUEST,
              "recorded_unix_ms": 1_795_000_000_000, "log_id": "0f" * 16}
    record = json.loads(seal(record, seq=1, prev_hash=GENESIS_HASH))  # as the record log writes
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    validator.validate(record)
    for broken in ({**record, "surprise": 1}, {k: v for k, v in record.items() if k != "user"},
                   {**record, "state": "TRAIL_STATE_GONE"}, {**record, "prompt_tokens": "3"}):
        assert list(validator.iter_errors(broken)), broken


def test_the_agent_record_path_equals_the_summary_path() -> None:
    """The agent builds a record from Trail.fields() without a protobuf message; it must be
    exactly what the summary a query returns gives (one definition of the summary)."""
    store, final = _store()
    http = _filled(pb.HttpRequest, skip=("status_code",))
    assert isinstance(http, pb.HttpRequest)
    http.status_code = 200
    engine = "chatcmpl-t2-1a2b3c4d"
    so = _filled(pb.StructuredOutputSummary)
    store.apply(pb.Batch(source_id="host:1:2", seq=1, model="m", events=[
        pb.Event(time_unix_nano=10**18, request_id=engine, lifecycle=pb.RequestLifecycle(
            phase=pb.LIFECYCLE_PHASE_ADDED, num_prompt_tokens=4, max_tokens=9)),
        pb.Event(time_unix_nano=10**18, request_id=engine,
                 grammar_compiled=_filled(pb.GrammarCompiled)),
        pb.Event(time_unix_nano=10**18 + 1, request_id=engine, so_summary=so),
        pb.Event(time_unix_nano=10**18 + 5 * 10**6, request_id=engine,
                 lifecycle=pb.RequestLifecycle(phase=pb.LIFECYCLE_PHASE_PREEMPTED)),
    ]), segment=1)
    (open_trail,) = store.trails()
    assert message_to_dict(open_trail.summary) == open_trail.fields()  # active, no HTTP half
    store.apply(pb.Batch(source_id="host:3:4", seq=2, events=[
        pb.Event(time_unix_nano=10**18 + 9 * 10**6, request_id=engine,
                 lifecycle=pb.RequestLifecycle(phase=pb.LIFECYCLE_PHASE_FINISHED,
                                               num_output_tokens=6, finish_reason="length",
                                               status="FINISHED_LENGTH_CAPPED")),
        pb.Event(time_unix_nano=10**18, request_id="t2", http=http, truncated=True)]),
        segment=2)
    (trail,) = final
    fields = trail.fields()
    assert fields == message_to_dict(trail.summary)
    assert record_from_fields(fields) == trail_record(trail.summary)
    assert fields["structured_output"] == message_to_dict(so)
    assert fields["source_ids"] == ["host:1:2", "host:3:4"]
    assert (fields["state"], fields["finalised_by"], fields["preemptions"]) == (
        "TRAIL_STATE_FINISHED", "FINALISED_BY_COMPLETE", 1)
    # A snapshot: a later revision does not change a summary already handed out.
    before = trail.summary
    store.sweep(now=float("inf"))
    assert before == trail.summary


@pytest.mark.parametrize("half", ["engine", "http"])
def test_a_forced_record_gives_back_the_trail_it_was_written_from(half: str) -> None:
    """After a restart a forced record is all the agent has of the half that came: the trail
    rebuilt from it (`from_record`) must give the same fields, and still miss only the other
    half, so that half completes it."""
    store, final = _store()
    engine = "chatcmpl-t3-1a2b3c4d"
    events = [pb.Event(time_unix_nano=10**18, request_id=engine, lifecycle=pb.RequestLifecycle(
        phase=pb.LIFECYCLE_PHASE_ADDED, num_prompt_tokens=4, max_tokens=9))]
    if half == "engine":
        events += [
            pb.Event(time_unix_nano=10**18, request_id=engine,
                     grammar_compiled=_filled(pb.GrammarCompiled)),
            pb.Event(time_unix_nano=10**18 + 1, request_id=engine,
                     so_summary=_filled(pb.StructuredOutputSummary)),
            pb.Event(time_unix_nano=10**18 + 9 * 10**6, request_id=engine,
                     lifecycle=pb.RequestLifecycle(phase=pb.LIFECYCLE_PHASE_FINISHED,
                                                   num_output_tokens=6, finish_reason="length"))]
    else:
        http = _filled(pb.HttpRequest, skip=("status_code",))
        assert isinstance(http, pb.HttpRequest)
        http.status_code = 200
        events.append(pb.Event(time_unix_nano=10**18, request_id="t3", http=http))
    store.apply(pb.Batch(source_id="host:1:2", seq=1, model="m", events=events), segment=1)
    store.sweep(now=float("inf"))  # past the linger: forced
    (trail,) = final
    record = record_from_fields(trail.fields())
    assert record["finalised_by"] == "FINALISED_BY_LINGER"
    rebuilt = from_record(json.loads(json.dumps(record)))  # as read back from the log
    assert rebuilt.fields() == trail.fields()
    assert missing_halves(rebuilt) == trail.incomplete
