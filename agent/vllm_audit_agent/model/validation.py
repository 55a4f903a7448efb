"""Validation of an ingested batch before it is stored and acknowledged (pure functions).

Whatever passes here can always be applied to the trail store and replayed from the WAL, so
a hook can never store a poison pill. Each rule either refuses the whole batch (a permanent
refusal: sending the same bytes again cannot succeed) or repairs one field and counts it:

Refused (REFUSAL_REASON_INVALID, the detail names the field):
  - `source_id` empty or over MAX_SOURCE_ID_BYTES; `seq` 0;
  - an empty batch (no events, no gap marker and no level report: it carries nothing);
  - a gap marker whose missing range is half-set, reversed or not below the batch's own seq;
    one with more than MAX_GAP_REASONS reasons or a reason key that is not a short
    identifier (reasons become metric labels).
Refused (REFUSAL_REASON_TOO_BIG): a batch over the agent's per-batch byte cap.

Repaired and counted in `clamped` by "<Message>.<field>" (the event is marked `truncated`):
  - a duration in ms (or allowed_tokens_mean) that is NaN or negative -> 0; +inf or over
    MAX_DURATION_MS -> that max;
  - a ratio (kv_cache_usage) outside [0, 1] or NaN -> clamped into [0, 1] (NaN -> 0);
  - a count (tokens, bytes, steps) below 0 -> 0; `time_unix_nano` below 0 -> 0;
  - an HTTP status outside [0, 999] -> 0 (unknown);
  - an enum value the contract does not define (a newer or broken hook) -> 0 (UNSPECIFIED):
    records name enums, and a number without a name has none;
  - a list of strings over MAX_LIST_ITEMS -> its first MAX_LIST_ITEMS, each string capped;
  - a string over its cap (MAX_TEXT_BYTES for prompt/output/error, MAX_STRING_BYTES for the
    rest) -> cut at a UTF-8 boundary;
  - content signals counted under a flag the contract does not name (a newer hook's) -> that
    count dropped; a rule set name over MAX_RULESET_CHARS -> cut;
  - a step's allowed_set that is not a valid encoding over its vocab_size (ids out of range
    or not ascending, runs past the vocabulary, a raw row of the wrong length, a reference
    to a step that is not earlier) -> removed and
    the step marked allowed_set_truncated, so whatever decodes a stored set gets a valid one.
Expanded first: steps sent as columns (a `so_steps` event, vllm_audit/step_columns.py) become
the per-step `so_step` events they stand for, and are checked as those.
Dropped and counted in `dropped_events`: an event with no body (an unknown kind from a newer
hook, or none at all), and a `so_steps` event whose columns do not line up; the rest of its
batch is kept.

Gap-marker counts are accepted up to 2^64-1: the counters they feed saturate (saturating_add).

Speed: almost every event needs no repair, so each kind of body has a fast check (`_FAST`,
derived from the same tables) that reads its fields in a few C calls and proves that no rule
would change it; only an event it cannot clear goes through the field-by-field repair. The
per-field walk was the largest share of the agent's ingest time.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from vllm_audit import allowed_sets, step_columns
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.model.content_signals import KNOWN

MAX_SOURCE_ID_BYTES = 256
#: Longest duration accepted, in ms (~115 days); keeps every derived timestamp in int64.
MAX_DURATION_MS = 1e10
MAX_STRING_BYTES = 4096
MAX_TEXT_BYTES = 1 << 20
MAX_GAP_REASONS = 64
#: Longest content-signal rule set name kept ("vllm-audit-signals/1" and its successors).
MAX_RULESET_CHARS = 64
#: Items kept of a repeated string field (ignored_identity_headers: a handful at most).
MAX_LIST_ITEMS = 16
#: Counters exported as uint64 stop here instead of overflowing.
UINT64_MAX = (1 << 64) - 1
_REASON_KEY = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")

#: Long free text (captured prompts and outputs, error messages); other strings are short.
_TEXT_FIELDS = frozenset({"HttpRequest.prompt", "HttpRequest.output", "HttpRequest.error",
                          "GrammarCompiled.error"})
_RATIOS = {"EngineStats": ("kv_cache_usage",)}


def _non_negative_floats() -> dict[str, tuple[str, ...]]:
    """Every float field of every event body but the ratios: durations, sums of seconds,
    means. Derived from the contract, so a float field added later is clamped too (a NaN in
    a new field once reached a record and failed its canonical encoding)."""
    out: dict[str, tuple[str, ...]] = {}
    for body in pb.Event.DESCRIPTOR.oneofs_by_name["body"].fields:
        message = body.message_type
        if message is None:
            continue
        names = tuple(f.name for f in message.fields
                      if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)
                      and f.name not in _RATIOS.get(message.name, ()))
        if names:
            out[message.name] = names
    return out


#: Non-negative and finite, at most MAX_DURATION_MS (the same cap for seconds: generous).
_DURATIONS = _non_negative_floats()
_COUNTS = {
    "RequestLifecycle": ("num_prompt_tokens", "num_output_tokens", "max_tokens"),
    "HttpRequest": ("prompt_tokens", "completion_tokens", "response_bytes",
                    "content_signals_unscanned_chars"),
    "StructuredOutputSummary": ("steps", "accepted_tokens", "rejected_tokens", "rollbacks"),
    "EngineStats": ("num_running_reqs", "num_waiting_reqs", "prefix_cache_queries",
                    "prefix_cache_hits", "prompt_tokens", "generation_tokens",
                    "num_preempted_reqs", "spec_decode_num_drafts",
                    "spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens"),
}


def _string_fields(cls: type[Message]) -> tuple[str, ...]:
    return tuple(f.name for f in cls.DESCRIPTOR.fields
                 if f.type == FieldDescriptor.TYPE_STRING and not f.is_repeated)


#: Every kind of event body, from the contract's `Event.body` oneof (one definition).
_BODIES: dict[str, type[Message]] = {
    f.name: getattr(pb, f.message_type.name)
    for f in pb.Event.DESCRIPTOR.oneofs_by_name["body"].fields
    if f.message_type is not None
}
_STRINGS = {cls.DESCRIPTOR.name: _string_fields(cls) for cls in _BODIES.values()}


def _enum_fields(cls: type[Message]) -> tuple[tuple[str, frozenset[int]], ...]:
    return tuple((f.name, frozenset(v.number for v in f.enum_type.values))
                 for f in cls.DESCRIPTOR.fields
                 if f.type == FieldDescriptor.TYPE_ENUM and f.enum_type is not None
                 and not f.is_repeated)


def _string_lists(cls: type[Message]) -> tuple[str, ...]:
    return tuple(f.name for f in cls.DESCRIPTOR.fields
                 if f.type == FieldDescriptor.TYPE_STRING and f.is_repeated)


#: Enum fields and their defined numbers, lists of strings: per body, from the contract.
_ENUMS = {c.DESCRIPTOR.name: e for c in _BODIES.values() if (e := _enum_fields(c))}
_STRING_LISTS = {c.DESCRIPTOR.name: x for c in _BODIES.values() if (x := _string_lists(c))}


def signals_ok(signals: pb.ContentSignals) -> bool:
    """Content signals a record may carry as they are: a short rule set name, and counts only
    under the flags the contract names (the keys become metric labels and schema names)."""
    return (len(signals.ruleset) <= MAX_RULESET_CHARS and KNOWN.issuperset(signals.prompt)
            and KNOWN.issuperset(signals.output))


def _repair_signals(signals: pb.ContentSignals) -> None:
    """Drops the counts of flags this agent does not know (a newer hook's) and cuts the rule
    set's name: the known counts are kept."""
    signals.ruleset = signals.ruleset[:MAX_RULESET_CHARS]
    for side in (signals.prompt, signals.output):
        for flag in [f for f in side if f not in KNOWN]:
            del side[flag]


def _all_fields() -> tuple[str, ...]:
    names = {"Event.time_unix_nano", "Event.request_id", "Batch.model", "Batch.process_role",
             "HttpRequest.status_code", "HttpRequest.content_signals", "CustomEvent.attributes",
             "StructuredOutputStep.allowed_set"}
    names.update(f"{msg}.{f}" for msg, fields in _ENUMS.items() for f, _ in fields)
    for table in (_DURATIONS, _RATIOS, _COUNTS, _STRINGS, _STRING_LISTS):
        names.update(f"{msg}.{f}" for msg, fields in table.items() for f in fields)
    return tuple(sorted(names))


#: Every field a rule may repair: the label set of the clamped-fields counter (born at 0).
CLAMPABLE_FIELDS = _all_fields()


@dataclass
class Verdict:
    """The outcome for one batch: refused (`refusal` set) or accepted as (now) repaired."""

    refusal: str = ""  # lower-case RefusalReason name ("invalid", "too_big"), "" if accepted
    detail: str = ""
    clamped: Counter[str] = field(default_factory=Counter)
    dropped_events: int = 0
    #: An accepted batch's events, as read here: what applies it reuses them instead of
    #: walking the batch again (each walk makes a Python object per event and asks its kind).
    events: Classified | None = None


@dataclass(slots=True)
class Classified:
    """A batch's events with a body, the name of each one's body (its oneof field) and
    each one's request id."""

    events: list[pb.Event]
    kinds: list[str]
    request_ids: list[str]


def classify(batch: pb.Batch) -> Classified:
    """The events of a batch that passed `validate` (so every one has a body)."""
    events = list(batch.events)
    kinds: list[Any] = [event.WhichOneof("body") for event in events]
    return Classified(events, kinds, [event.request_id for event in events])


def validate(batch: pb.Batch, max_batch_bytes: int) -> Verdict:
    """Checks `batch` and repairs it in place; see the module docstring for the rules."""
    size = batch.ByteSize()
    if size > max_batch_bytes:
        return Verdict("too_big", f"batch is {size} bytes; the agent's cap is {max_batch_bytes}")
    if not batch.source_id:
        return Verdict("invalid", "source_id is empty")
    if len(batch.source_id.encode()) > MAX_SOURCE_ID_BYTES:
        return Verdict("invalid", f"source_id is over {MAX_SOURCE_ID_BYTES} bytes")
    if batch.seq == 0:
        return Verdict("invalid", "seq is 0 (seqs start at 1)")
    # A batch with only a level report (applied_level) is how an idle hook confirms a level.
    if not batch.events and not batch.HasField("gap") and not batch.applied_level:
        return Verdict("invalid", "empty batch: no events, no gap marker, no level report")
    problem = _check_gap(batch)
    if problem:
        return Verdict("invalid", problem)
    verdict = Verdict()
    _cap_string(batch, "Batch", "model", verdict.clamped)
    _cap_string(batch, "Batch", "process_role", verdict.clamped)
    fast, clamped, dropped = _FAST, verdict.clamped, 0
    events = list(batch.events)
    kinds: list[Any] = [event.WhichOneof("body") for event in events]
    if "so_steps" in kinds:
        events, kinds, dropped = _expand_step_columns(batch, events, kinds)
    request_ids: list[str] = []
    for event, kind in zip(events, kinds, strict=True):
        request_id = event.request_id
        request_ids.append(request_id)
        if kind is None:
            dropped += 1
        elif not fast[kind](event, request_id) and _repair_event(event, clamped):
            event.truncated = True
            request_ids[-1] = event.request_id  # capped
    if dropped:
        verdict.dropped_events = dropped
        kept = [(e, k) for e, k in zip(events, kinds, strict=True) if k is not None]
        del batch.events[:]
        batch.events.extend(e for e, _ in kept)
        # The kept events are copies now (extend copies): read them again.
        verdict.events = classify(batch)
    else:
        verdict.events = Classified(events, kinds, request_ids)
    return verdict


def _expand_step_columns(batch: pb.Batch, events: list[pb.Event], kinds: list[Any]
                         ) -> tuple[list[pb.Event], list[Any], int]:
    """Steps sent as columns (`so_steps`) become, in place, the per-step events they stand
    for, before any rule reads the batch: what is stored, applied and replayed is what a
    hook sending per-step events sends. Columns that do not line up are dropped, counted."""
    out: list[pb.Event] = []
    bad = 0
    for event, kind in zip(events, kinds, strict=True):
        if kind != "so_steps":
            out.append(event)
            continue
        try:
            out.extend(step_columns.expand(event))
        except step_columns.StepColumnsError:
            bad += 1
    del batch.events[:]
    batch.events.extend(out)
    events = list(batch.events)  # extend copied them
    return events, [event.WhichOneof("body") for event in events], bad


def _fast_check_source(name: str, kind: str) -> str:
    """The source of the fast check for an event whose body (oneof member `kind`) is of
    type `name`: straight-line code that reads each field the rules look at once, the
    event's own (time, request id: passed in, as read by the caller) first. Generated from
    the rule tables (one definition), as `dataclasses` generates its methods: a generic
    loop over the tables cost 3x as much, and this check runs for every ingested event."""
    lines = [f"def check_{name}(event, request_id):",
             f"    if event.time_unix_nano < 0 or len(request_id) * 4 > {MAX_STRING_BYTES}:",
             "        return False",
             f"    body = event.{kind}"]
    if name == "CustomEvent":  # a map of attributes: always checked in full (rare)
        return "\n".join([*lines, "    return False"]) + "\n"
    counts = _COUNTS.get(name, ())
    if counts:
        lines.append("    if " + " or ".join(f"body.{f} < 0" for f in counts) + ":")
        lines.append("        return False")
    durations = _DURATIONS.get(name, ())
    if durations:
        # A NaN fails `>=`; non-negative values each at most their sum, and an inf makes
        # the sum inf: the sum under the cap proves every value is.
        names = [f"d{i}" for i in range(len(durations))]
        lines.append(f"    {', '.join(names)}, = " + "".join(f"body.{f}, " for f in durations))
        lines.append("    if not (" + " and ".join(f"{d} >= 0.0" for d in names)
                     + f" and {' + '.join(names)} <= {MAX_DURATION_MS!r}):")
        lines.append("        return False")
    for f in _RATIOS.get(name, ()):
        lines.append(f"    if not 0.0 <= body.{f} <= 1.0:")
        lines.append("        return False")
    strings = _STRINGS[name]
    short = [f for f in strings if f"{name}.{f}" not in _TEXT_FIELDS]
    texts = [f for f in strings if f"{name}.{f}" in _TEXT_FIELDS]
    # Under a quarter of a cap in characters: under it in UTF-8 bytes (at most 4 per one).
    if short:
        lines.append("    if (" + " + ".join(f"len(body.{f})" for f in short)
                     + f") * 4 > {MAX_STRING_BYTES}:")
        lines.append("        return False")
    for f in texts:
        lines.append(f"    if len(body.{f}) * 4 > {MAX_TEXT_BYTES}:")
        lines.append("        return False")
    # Enum numbers the contract does not define, and lists of strings (rare: only the HTTP
    # half's ignored headers), take the field-by-field path.
    for f, _ in _ENUMS.get(name, ()):
        lines.append(f"    if body.{f} not in ENUM_{f}:")
        lines.append("        return False")
    for f in _STRING_LISTS.get(name, ()):
        lines.append(f"    if body.{f}:")
        lines.append("        return False")
    if name == "HttpRequest":
        lines.append("    if not 0 <= body.status_code <= 999:")
        lines.append("        return False")
        lines.append("    if body.HasField('content_signals') and not SIGNALS_OK(body.content_signals):")
        lines.append("        return False")
    if name == "StructuredOutputStep":  # an allowed-token set is checked in full when present
        lines.append("    if body.HasField('allowed_set'):")
        lines.append("        return False")
    lines.append("    return True")
    return "\n".join(lines) + "\n"


#: A fast check: (event, its request id) -> True when no rule of `_repair_event` would change
#: the event (False only means: check it field by field).
FastCheck = Callable[[pb.Event, str], bool]


def _fast_check(name: str, kind: str) -> FastCheck:
    namespace: dict[str, Any] = {f"ENUM_{f}": defined for f, defined in _ENUMS.get(name, ())}
    namespace["SIGNALS_OK"] = signals_ok
    # The source is generated from the contract's descriptors, never from input.
    exec(compile(_fast_check_source(name, kind), f"<fast check {name}>", "exec"), namespace)
    check: FastCheck = namespace[f"check_{name}"]
    return check


#: Body kind (the oneof field name) -> its fast check.
_FAST: dict[str, FastCheck] = {
    kind: _fast_check(cls.DESCRIPTOR.name, kind) for kind, cls in _BODIES.items()}


def _check_gap(batch: pb.Batch) -> str:
    gap = batch.gap
    if len(gap.dropped_by_reason) > MAX_GAP_REASONS:
        return f"gap marker has {len(gap.dropped_by_reason)} reasons (max {MAX_GAP_REASONS})"
    for reason in gap.dropped_by_reason:
        if not _REASON_KEY.match(reason):
            return f"gap marker reason {reason[:64]!r} is not an identifier of 1-128 characters"
    first, last = gap.first_missing_seq, gap.last_missing_seq
    if (first == 0) != (last == 0) or first > last:
        return f"gap marker missing range [{first}, {last}] is not a range"
    if last and last >= batch.seq:
        return f"gap marker missing range [{first}, {last}] is not below seq {batch.seq}"
    return ""


# One flat check per clampable field of the contract, in the contract's order (a table of
# lambdas cost a call per field per event on ingest's path).
def _repair_event(event: pb.Event, clamped: Counter[str]) -> bool:  # noqa: C901
    before = sum(clamped.values())
    if event.time_unix_nano < 0:
        event.time_unix_nano = 0
        clamped["Event.time_unix_nano"] += 1
    _cap_string(event, "Event", "request_id", clamped)
    kind = event.WhichOneof("body")
    assert kind is not None
    body: Message = getattr(event, kind)
    name = body.DESCRIPTOR.name
    for f in _DURATIONS.get(name, ()):
        value = getattr(body, f)
        fixed = 0.0 if math.isnan(value) or value < 0 else min(value, MAX_DURATION_MS)
        if fixed != value or math.isnan(value):
            setattr(body, f, fixed)
            clamped[f"{name}.{f}"] += 1
    for f in _RATIOS.get(name, ()):
        value = getattr(body, f)
        fixed = 0.0 if math.isnan(value) else min(max(value, 0.0), 1.0)
        if fixed != value or math.isnan(value):
            setattr(body, f, fixed)
            clamped[f"{name}.{f}"] += 1
    for f in _COUNTS.get(name, ()):
        if getattr(body, f) < 0:
            setattr(body, f, 0)
            clamped[f"{name}.{f}"] += 1
    if name == "HttpRequest" and not 0 <= event.http.status_code <= 999:
        event.http.status_code = 0
        clamped["HttpRequest.status_code"] += 1
    if (name == "HttpRequest" and event.http.HasField("content_signals")
            and not signals_ok(event.http.content_signals)):
        _repair_signals(event.http.content_signals)
        clamped["HttpRequest.content_signals"] += 1
    for f, defined in _ENUMS.get(name, ()):
        if getattr(body, f) not in defined:
            setattr(body, f, 0)
            clamped[f"{name}.{f}"] += 1
    for f in _STRINGS[name]:
        _cap_string(body, name, f, clamped)
    for f in _STRING_LISTS.get(name, ()):
        _cap_list(body, name, f, clamped)
    if name == "StructuredOutputStep" and event.so_step.HasField("allowed_set"):
        step = event.so_step
        if allowed_sets.check(step.allowed_set, step.vocab_size, step.step):
            step.ClearField("allowed_set")
            step.allowed_set_truncated = True
            clamped["StructuredOutputStep.allowed_set"] += 1
    if name == "CustomEvent":
        attributes = event.custom.attributes
        for key in list(attributes):
            value = attributes[key]
            if len(key.encode()) > MAX_STRING_BYTES:
                del attributes[key]  # a key cut short could collide with another: drop it
                clamped["CustomEvent.attributes"] += 1
            elif len(value.encode()) > MAX_STRING_BYTES:
                attributes[key] = value.encode()[:MAX_STRING_BYTES].decode("utf-8", "ignore")
                clamped["CustomEvent.attributes"] += 1
    return sum(clamped.values()) > before


def _cap_string(message: Message, name: str, f: str, clamped: Counter[str]) -> None:
    value: str = getattr(message, f)
    cap = MAX_TEXT_BYTES if f"{name}.{f}" in _TEXT_FIELDS else MAX_STRING_BYTES
    if len(value) * 4 <= cap:  # fast path: no UTF-8 character is over 4 bytes
        return
    data = value.encode()
    if len(data) > cap:
        setattr(message, f, data[:cap].decode("utf-8", "ignore"))
        clamped[f"{name}.{f}"] += 1


def _cap_list(message: Message, name: str, f: str, clamped: Counter[str]) -> None:
    items = getattr(message, f)
    if len(items) <= MAX_LIST_ITEMS and all(len(x) * 4 <= MAX_STRING_BYTES for x in items):
        return
    kept = [x.encode()[:MAX_STRING_BYTES].decode("utf-8", "ignore")
            for x in items[:MAX_LIST_ITEMS]]
    if kept == list(items):
        return
    del items[:]
    items.extend(kept)
    clamped[f"{name}.{f}"] += 1


def saturating_add(counter: Counter[str], key: str, n: int) -> None:
    """counter[key] += n, stopping at 2^64-1 (the counters are exported as uint64)."""
    counter[key] = min(counter[key] + n, UINT64_MAX)
