"""The JSON record written for each final trail and each revision of one (topic
`<prefix>.requests`).

Identity: `trail_id` is the agent-side key (unique per request: never the client's
X-Request-Id, see trails.py) and `event_id` = `<trail_id>/<revision>`, so a consumer that
de-duplicates on event_id keeps every revision, and one that keeps the newest revision per
trail_id has the whole story.

Completeness: every field of the events the hook sends is either mapped into the record or
deliberately excluded, with the reason, in FIELD_MAP below; tests/agent/test_record_fields.py
fails when a field is added to the contract without a decision here.

Field names are the proto's; every field is present (defaults included; of a oneof, only the
member that is set), enums are their
names, and 64-bit integers stay JSON numbers (protobuf's own JSON mapping turns them into
strings, which SIEM queries then have to cast). The conversion walks a per-type field plan
built once from the descriptor: `json_format.MessageToDict` cost ~60 µs a trail, the largest
share of the agent's ingest time at level summary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache
from operator import attrgetter
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q

#: 2: engine_at_finish, trail_id/revision/finalised_by/incomplete, source identity, HTTP method/path, user
#: agent, bytes, capture policy, compile time, spec hash, max_tokens; event_id by revision.
#: 3: identity with its provenance (auth_decision, user_source, tenant_source, claimed_user,
#: ignored_identity_headers); auth_status is now derived from what vLLM's key check decided.
#: 4: structured_output.allowed_sets_over_step_cap, _over_trail_cap, _over_backlog and
#: allowed_set_bytes (level full-with-allowed-sets: the sets' caps and what they kept).
#: 5: grammar_events (the grammar and every step, protobuf JSON) and grammar_events_omitted,
#: so a record alone can be replayed.
#: 6: log_id (the record log the record belongs to: one Merkle tree per log, several logs
#: on one topic).
#: 7: model_provenance (weights' and tokenizer's digests, revision, dtype, quantization, vLLM
#: and hook versions, changes since start), lora_adapter (name, path, digest) and sampling
#: (the parameters the engine applied); admin records (type "admin") beside them.
#: 8: traceparent (the caller's W3C trace context, which the OTLP span joins); content (the
#: prompt and output a capture policy kept readable, sealed under a content key:
#: records/content.py; prompt and output are then empty); erasure records (type "erasure");
#: content_signals (the hook's counts of injection, secret and personal-data patterns in the
#: prompt and output, taken before the capture policy; null when none were computed) and
#: content_signals_unscanned_chars.
SCHEMA_VERSION = 8

#: Message types a record renders null when a message holds none of them (unset), not as an
#: object of defaults: content signals that were not computed are not "nothing matched". A
#: set one always names its rule set, so it is never empty.
NULL_WHEN_UNSET = frozenset({pb.ContentSignals.DESCRIPTOR.full_name})

#: Where every field of the hook's per-request events goes: the TrailSummary field it fills,
#: or None with the reason it is not in the summary (the event itself is still kept in the
#: trail's events, and at level full published to the trail-events topic).
FIELD_MAP: dict[str, dict[str, str | tuple[None, str]]] = {
    "HttpRequest": {
        "method": "http_method", "path": "http_path", "client_ip": "client_ip",
        "user": "user", "model": "model", "status_code": "status_code",
        "auth_status": (None, "read only from a hook older than auth_decision, as its value; "
                              "the record's auth_status is auth_decision's lower-case name"),
        "api_key_sha256": "api_key_sha256", "stream": "stream",
        "prompt": "prompt", "output": "output", "capture_policy": "capture_policy",
        "prompt_tokens": "prompt_tokens", "completion_tokens": "completion_tokens",
        "latency_ms": "latency_ms", "ttft_ms": "ttft_ms", "error": "error",
        "user_agent": "user_agent", "response_bytes": "response_bytes", "tenant": "tenant",
        "vllm_request_id": "vllm_request_id", "client_disconnected": "client_disconnected",
        "client_request_id": "client_request_id", "auth_decision": "auth_decision",
        "user_source": "user_source", "tenant_source": "tenant_source",
        "claimed_user": "claimed_user", "ignored_identity_headers": "ignored_identity_headers",
        "traceparent": "traceparent",
        "content_signals": "content_signals",
        "content_signals_unscanned_chars": "content_signals_unscanned_chars",
    },
    "RequestLifecycle": {
        "phase": (None, "drives state, preemptions and completeness; each transition is an event"),
        "num_prompt_tokens": "prompt_tokens",
        "num_output_tokens": "completion_tokens",
        "finish_reason": "finish_reason",
        "status": (None, "drives state (FINISHED_ERROR -> FAILED); kept in the event"),
        "max_tokens": "max_tokens",
        "structured_output": (None, "implied by grammar_backend / structured_output"),
        "external_request_id": (None, "the caller's id: an offline trail's client_request_id "
                                      "(a served trail's comes from its HTTP half)"),
        "provenance": "model_provenance",
        "lora_adapter": "lora_adapter",
        "sampling": "sampling",
    },
    "GrammarCompiled": {
        "backend": "grammar_backend", "spec_type": "grammar_spec_type",
        "compile_ms": "grammar_compile_ms", "error": "grammar_error",
        "spec_sha256": "grammar_spec_sha256",
        "spec": (None, "the grammar text (VLLM_AUDIT_INCLUDE_GRAMMAR), kept in the trail's "
                       "event for `vllm-audit replay`; the record keeps its hash"),
        "spec_size": (None, "goes with spec: shows whether the kept text was cut"),
    },
    "Event": {
        "time_unix_nano": "created_unix_ms",
        "request_id": "request_id",
        "truncated": "truncated_events",
        "lifecycle": (None, "mapped field by field (RequestLifecycle)"),
        "grammar_compiled": (None, "mapped field by field (GrammarCompiled)"),
        "so_step": (None, "one per grammar step: trail events and the trail-events topic"),
        "so_steps": (None, "a batch's grammar steps as columns (the hook's columnar capture): "
                           "expanded into so_step events before validation (step_columns.py)"),
        "so_summary": "structured_output",
        "engine_stats": (None, "not per request: the engine-stats topic; the snapshot nearest "
                                "a trail's finish is its record's engine_at_finish"),
        "custom": (None, "application events (record_custom_event): kept in the trail's events"),
        "http": (None, "mapped field by field (HttpRequest)"),
        "admin": (None, "not a request: each is a record of its own, type admin (admin_record)"),
    },
    "Batch": {
        "source_id": "source_ids",
        "seq": (None, "transport: de-duplication only"),
        "epoch": (None, "transport: de-duplication only"),
        "events": (None, "mapped event by event (Event)"),
        "gap": (None, "hook losses: counted in the agent's stats and metrics"),
        "process_role": (None, "identifies the process kind, not the request"),
        "pid": (None, "part of source_id"),
        "model": "model",
        "self_timing": (None, "the hook's own cost (self-timing mode): metrics only"),
        "applied_level": (None, "the hook's level report: stats source_levels and metrics"),
        "config_epoch": (None, "the hook's level report: which config it applied"),
        "config_version": (None, "the hook's level report: which config it applied"),
        "gpu_uuids": (None, "the process's GPUs: scope of the GPU metrics (--gpu-scope pod)"),
        "instance_tag": (None, "transport: who may read a trail back over the ingest socket "
                               "(ReadAudit)"),
    },
}

_Convert = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


@cache
def _plan(descriptor: Descriptor) -> tuple[tuple[str, _Convert, bool], ...]:
    """(field name, value converter, repeated) for every field of a message type."""
    plan: list[tuple[str, _Convert, bool]] = []
    for field in descriptor.fields:
        convert: _Convert = _identity
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            # map<string, scalar> (counters by reason): a JSON object, numbers kept numbers.
            plan.append((field.name, dict, False))
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            nullable = (field.message_type is not None
                        and field.message_type.full_name in NULL_WHEN_UNSET)
            convert = _dict_or_none if nullable else message_to_dict
        elif field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
            names = {v.number: v.name for v in field.enum_type.values}
            convert = names.get
        plan.append((field.name, convert, field.is_repeated))
    return tuple(plan)


@cache
def _oneofs(descriptor: Descriptor) -> tuple[tuple[str, frozenset[str]], ...]:
    """(oneof name, its member names) for every oneof of a message type."""
    return tuple((o.name, frozenset(f.name for f in o.fields)) for o in descriptor.oneofs)


@cache
def _scalar_getter(descriptor: Descriptor) -> tuple[tuple[str, ...], Callable[[Any], Any]] | None:
    """For a message of scalars only (no enum, message, repeated field or oneof, two or more
    of them), its field names and one getter of all their values: a single C call instead of
    a Python loop (a structured-output summary per record, an engine snapshot)."""
    plan = _plan(descriptor)
    if len(plan) < 2 or descriptor.oneofs or any(
            convert is not _identity or repeated for _, convert, repeated in plan):
        return None
    names = tuple(name for name, _, _ in plan)
    return names, attrgetter(*names)


def message_to_dict(message: Message) -> dict[str, Any]:
    """Every field, defaults included, except the members of a oneof that are not the one set:
    an empty member can be the value (the empty allowed-token set is `allowed_ids: {}`), so a
    member at its defaults must not be listed beside it."""
    scalars = _scalar_getter(message.DESCRIPTOR)
    if scalars is not None:
        names, values = scalars
        return dict(zip(names, values(message), strict=True))
    out: dict[str, Any] = {}
    for name, convert, repeated in _plan(message.DESCRIPTOR):
        value = getattr(message, name)
        out[name] = [convert(v) for v in value] if repeated else convert(value)
    for oneof, members in _oneofs(message.DESCRIPTOR):
        chosen = message.WhichOneof(oneof)
        for name in members:
            if name != chosen:
                del out[name]
    return out


def _dict_or_none(message: Message) -> dict[str, Any] | None:
    """A NULL_WHEN_UNSET message: null when it holds nothing."""
    return message_to_dict(message) if message.ByteSize() else None


def event_id(trail_id: str, revision: int) -> str:
    """Stable across re-publication (at-least-once delivery), distinct per revision."""
    return f"{trail_id}/{revision}"


def trail_record(summary: q.TrailSummary, engine: pb.EngineStats | None = None
                 ) -> dict[str, Any]:
    """The record of a trail; `engine` is the engine snapshot nearest its finish (the load it
    ran under: queue, KV cache, running requests), null when none was known."""
    return record_from_fields(message_to_dict(summary), engine)


#: Event kinds a record carries whole: the grammar and its steps, so `vllm-audit replay` can
#: prove a trail from its Kafka record or an export alone (level full and above).
GRAMMAR_PROOF_KINDS = frozenset({"grammar_compiled", "so_step"})
#: Levels whose trails hold every step (key-events keeps some: no proof).
GRAMMAR_PROOF_LEVELS = frozenset({pb.AUDIT_LEVEL_FULL, pb.AUDIT_LEVEL_FULL_WITH_ALLOWED_SETS})
#: Default cap on a record's grammar events (protobuf JSON bytes): under Kafka's default 1 MB
#: message limit with room for the prompt and output. Over it the record carries none and
#: says how many it left out (the trail keeps them: `query get --events`).
DEFAULT_GRAMMAR_PROOF_BYTES = 256 << 10


def grammar_proof(events: Iterable[bytes], max_bytes: int = DEFAULT_GRAMMAR_PROOF_BYTES
                  ) -> tuple[list[dict[str, Any]], int]:
    """(the trail's grammar events as protobuf JSON, how many were left out over the cap;
    `max_bytes` 0: none, and none counted)."""
    proof: list[dict[str, Any]] = []
    if max_bytes <= 0:
        return proof, 0
    for raw in events:
        event = pb.Event.FromString(raw)
        if event.WhichOneof("body") in GRAMMAR_PROOF_KINDS:
            proof.append(json_format.MessageToDict(event, preserving_proto_field_name=True))
    if proof and len(orjson.dumps(proof)) > max_bytes:
        return [], len(proof)
    return proof, 0


def record_from_fields(fields: dict[str, Any], engine: pb.EngineStats | None = None,
                       proof: tuple[list[dict[str, Any]], int] = ([], 0)) -> dict[str, Any]:
    """The record of a trail from its summary's fields as `message_to_dict` gives them (the
    agent passes `Trail.fields()`, skipping the protobuf message altogether); `proof` is
    `grammar_proof` of its events."""
    trail_id, revision = fields["request_id"], fields["revision"]
    finish_reason = fields["finish_reason"]
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "trail_id": trail_id,
        "event_id": event_id(trail_id, revision),
        "timestamp_ms": fields["finished_unix_ms"] or fields["created_unix_ms"],
        # OpenTelemetry GenAI semantic-convention names where one exists.
        "gen_ai.request.model": fields["model"],
        "gen_ai.usage.input_tokens": fields["prompt_tokens"],
        "gen_ai.usage.output_tokens": fields["completion_tokens"],
        "gen_ai.response.finish_reasons": [finish_reason] if finish_reason else [],
        "gen_ai.response.id": trail_id,
        "engine_at_finish": message_to_dict(engine) if engine is not None else None,
        "grammar_events": proof[0],
        "grammar_events_omitted": proof[1],
    }
    record.update(fields)
    return record


def admin_record(event: pb.Event, batch: pb.Batch) -> dict[str, Any]:
    """The record of one call to a vLLM administrative endpoint (the record log adds its type,
    "admin"): every AdminAction field, when, from which hook process. Its event_id is fixed
    by the event (the hook process, the batch, the event's place), so a replayed batch gives
    the same id."""
    action = message_to_dict(event.admin)
    return {
        "schema": SCHEMA_VERSION,
        "event_id": f"admin/{batch.source_id}/{batch.epoch}/{batch.seq}/{event.time_unix_nano}",
        "timestamp_ms": event.time_unix_nano // 1_000_000,
        "source_id": batch.source_id,
        "model": batch.model,
        **action,
    }


def encode(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)
