"""`vllm-audit replay TRAIL`: re-runs a trail's recorded grammar with the same vLLM backend over
the recorded accepted tokens and proves, step by step, that each token was allowed and that the
allowed count matches the one recorded — or names the first step where not.

The grammar is compiled by vLLM's own backend class (xgrammar, guidance, outlines,
lm-format-enforcer) from the spec text the trail kept (the hook keeps it at levels full and up;
VLLM_AUDIT_INCLUDE_GRAMMAR=true at every level, false never),
and each row is filled with the backend grammar's own `fill_bitmask`, exactly as vLLM's
`StructuredOutputManager` fills it (a terminated grammar gets an all-allowed row). Counts use
the hook's popcount. Tokens are replayed one at a time: under speculative decoding token k of a
step was sampled from the row filled after the k tokens before it, which is the same state.
A trail recorded at level full-with-allowed-sets also has each step's allowed set (the row of
its first token): it is decoded (`vllm_audit.allowed_sets.decode`) and must equal the replayed
row token for token; a step whose set the hook dropped over a cap (allowed_set_truncated) is
checked on its count alone, and the report counts such steps.

Needs vLLM, the backend's package and the model's tokenizer (`--model`): run it where vLLM
runs (the vLLM image), not in the agent's sidecar image.

TRAIL is one of:
- a file holding a trail as `vllm-audit query get ID --events` prints it (the record shape:
  {"summary": record, "events": [...]}; protobuf's JSON of GetTrailResponse also works);
- a file holding a `requests` record (one JSON object, e.g. a Kafka message's value) or an
  export (`vllm-audit export`, JSON lines; `--trail-id` picks the trail, newest revision):
  at levels full and up a record carries its grammar and every step (`grammar_events`,
  records.grammar_proof), so it is a proof on its own;
- a trail id, read from Kafka's `<prefix>.requests` (`--kafka-bootstrap`, newest revision)
  or from the agent at `--address` (with the CLI's credentials).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
from google.protobuf import json_format

from vllm_audit import allowed_sets
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q

# Exit codes of the subcommand.
PROVEN, MISMATCH, UNUSABLE = 0, 1, 2


class ReplayError(Exception):
    """The trail cannot be replayed (no grammar text, missing steps, backend unavailable)."""


@dataclass
class Mismatch:
    step: int
    token_index: int  # position within the step's accepted tokens
    token: int
    reason: str


@dataclass
class ReplayReport:
    request_id: str
    backend: str
    spec_type: str
    steps_checked: int = 0
    tokens_checked: int = 0
    #: A recorded rejection the replay confirmed (the token was not allowed there).
    rejections_confirmed: int = 0
    #: Steps whose recorded allowed set equalled the replayed row, and steps recorded with
    #: their set dropped over a cap (checked on the count alone).
    sets_checked: int = 0
    sets_truncated: int = 0
    first_mismatch: Mismatch | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def proven(self) -> bool:
        return self.first_mismatch is None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["proven"] = self.proven
        return out


@dataclass
class _Recorded:
    backend: str
    spec_type: str
    spec: str
    vocab_size: int
    steps: list[pb.StructuredOutputStep]


def load_trail_file(path: Path) -> q.GetTrailResponse:
    """A trail as `vllm-audit query get ID --events` prints it."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ReplayError(f"{path}: not a readable JSON trail ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise ReplayError(f"{path}: no trail events (write it with `query get ID --events`)")
    trail = q.GetTrailResponse()
    try:
        json_format.ParseDict(data.get("summary") or {}, trail.summary,
                              ignore_unknown_fields=True)
        for item in data["events"]:
            trail.events.append(_event_from_dict(item))
    except (json_format.ParseError, TypeError, AttributeError) as exc:
        raise ReplayError(f"{path}: not a trail ({exc})") from None
    return trail


def load_any_file(path: Path, trail_id: str | None = None) -> q.GetTrailResponse:
    """A trail file, a record file or an export (JSON lines of records)."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read it ({exc})") from None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        data = None  # JSON lines: an export
    if isinstance(data, dict) and ("events" in data or "summary" in data):
        return load_trail_file(path)
    if isinstance(data, dict):
        return trail_from_records([data], trail_id, str(path))
    records: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise ReplayError(f"{path}: line {n} is not JSON: not a trail, record or export"
                              ) from None
        if isinstance(item, dict):
            records.append(item)
    return trail_from_records(records, trail_id, str(path))


def trail_from_records(records: list[dict[str, Any]], trail_id: str | None,
                       where: str) -> q.GetTrailResponse:
    """The newest revision of one trail among `records` (request records; checkpoints and
    access records are skipped), as a trail with its grammar events."""
    requests = [r for r in records if r.get("type", "request") == "request" and "trail_id" in r]
    ids = {str(r["trail_id"]) for r in requests}
    if trail_id is None:
        if len(ids) != 1:
            raise ReplayError(f"{where}: {len(ids)} trails: name one with --trail-id")
        trail_id = ids.pop()
    mine = [r for r in requests if r["trail_id"] == trail_id]
    if not mine:
        raise ReplayError(f"{where}: no record of trail {trail_id!r}")
    record = max(mine, key=lambda r: int(r.get("revision") or 0))
    events = record.get("grammar_events")
    if not events:
        omitted = int(record.get("grammar_events_omitted") or 0)
        why = (f"its {omitted} grammar events were over the agent's "
               "--record-grammar-max-bytes" if omitted else
               "it was recorded below level full or without a grammar")
        raise ReplayError(f"the record of {trail_id!r} carries no grammar events ({why}): "
                          "replay the trail read from the agent instead")
    trail = q.GetTrailResponse()
    trail.summary.request_id = trail_id
    try:
        for item in events:
            trail.events.append(json_format.ParseDict(item, pb.Event(),
                                                      ignore_unknown_fields=True))
    except (json_format.ParseError, TypeError, AttributeError) as exc:
        raise ReplayError(f"{where}: the record's grammar events do not parse ({exc})") from None
    return trail


def _event_from_dict(item: dict[str, Any]) -> pb.Event:
    """One event from either JSON shape. The record shape lists the member of the `body`
    oneof that is set (older ones listed every member, unset ones at their defaults: the
    member that is not empty is the body)."""
    event = pb.Event()
    scalars = {f.name: item[f.name] for f in pb.Event.DESCRIPTOR.fields
               if f.containing_oneof is None and f.name in item}
    json_format.ParseDict(scalars, event, ignore_unknown_fields=True)
    for f in pb.Event.DESCRIPTOR.oneofs_by_name["body"].fields:
        value = item.get(f.name)
        if not isinstance(value, dict):
            continue
        body = getattr(event, f.name).__class__()
        json_format.ParseDict(_without_empty(value), body, ignore_unknown_fields=True)
        if body.ByteSize():
            getattr(event, f.name).CopyFrom(body)
            break
    return event


def _without_empty(body: dict[str, Any]) -> dict[str, Any]:
    """The record shape prints every field, an unset message field as `{}` (a step's
    `allowed_set` below level full-with-allowed-sets): parsed, `{}` would be a set *present*
    with no encoding. Such a field of the body is left out. Only at the body's level: inside a
    set, `{"allowed_ids": {}}` (protobuf's JSON of an empty id list) is a set that allows
    nothing, and stays."""
    return {key: item for key, item in body.items() if item != {}}


def _recorded(trail: q.GetTrailResponse) -> _Recorded:
    grammars = [e.grammar_compiled for e in trail.events
                if e.WhichOneof("body") == "grammar_compiled"]
    if not grammars:
        raise ReplayError("the trail has no GrammarCompiled event (not a structured request, "
                          "or fetched without events)")
    g = grammars[0]
    if g.error:
        raise ReplayError(f"the grammar failed to compile when recorded: {g.error}")
    if not g.spec and g.spec_size:
        raise ReplayError("the trail keeps no grammar text: the hook keeps it at levels full "
                          "and up unless VLLM_AUDIT_INCLUDE_GRAMMAR=false")
    if len(g.spec.encode()) != g.spec_size:
        raise ReplayError(f"the grammar text was cut at {len(g.spec.encode())} of "
                          f"{g.spec_size} bytes: raise VLLM_AUDIT_GRAMMAR_MAX_BYTES")
    steps = sorted((e.so_step for e in trail.events if e.WhichOneof("body") == "so_step"),
                   key=lambda s: s.step)
    if not steps:
        raise ReplayError("the trail has no grammar steps: record at level full")
    numbers = [s.step for s in steps]
    if numbers != list(range(1, len(steps) + 1)):
        missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
        raise ReplayError(f"the trail lacks steps {missing[:10]}: a replay needs every step "
                          "(level full; key-events keeps only some)")
    return _Recorded(g.backend, g.spec_type, g.spec, steps[0].vocab_size, steps)


def _replayer(rec: _Recorded, model: str) -> Any:
    try:
        from vllm_hooks.vllm.replay_grammar import GrammarReplayer, GrammarUnavailable
    except ImportError as exc:  # the agent's own image has no vLLM
        raise ReplayError(f"replay needs vLLM and its backends installed: {exc}") from None
    try:
        return GrammarReplayer(rec.backend, rec.spec_type, rec.spec, model, rec.vocab_size)
    except GrammarUnavailable as exc:
        raise ReplayError(str(exc)) from None


def replay(trail: q.GetTrailResponse, model: str) -> ReplayReport:
    """Raises ReplayError when the trail cannot be replayed at all."""
    start = time.perf_counter()
    rec = _recorded(trail)
    report = ReplayReport(trail.summary.request_id, rec.backend, rec.spec_type)
    replayer = _replayer(rec, model)
    try:
        _check_steps(rec, replayer, report)
    finally:
        report.seconds = time.perf_counter() - start
    return report


def _check_steps(rec: _Recorded, replayer: Any, report: ReplayReport) -> None:
    earlier = allowed_sets.sets_by_step(rec.steps)
    for st in rec.steps:
        per_token = list(st.allowed_per_token) or [st.allowed_tokens]
        for k, token in enumerate(st.accepted_tokens):
            count, words = replayer.row()
            allowed = replayer.allows(words, token)
            recorded = per_token[k] if k < len(per_token) else -1
            if k == 0:
                differs = _set_differs(st, replayer.row_bytes(words), earlier, report)
                if differs:
                    report.first_mismatch = Mismatch(st.step, 0, token, differs)
                    return
            if not st.accepted and k == 0 and not allowed:
                report.rejections_confirmed += 1
                report.steps_checked += 1
                return  # the request ended at its recorded rejection
            if not allowed:
                reason = "token not allowed by the grammar here"
            elif recorded >= 0 and recorded != count:
                reason = f"allowed count {count} but the trail recorded {recorded}"
            elif not st.accepted:
                reason = "the trail records a rejection of an allowed token"
            elif not replayer.accept(token):
                reason = "the grammar refused the token on accept"
            else:
                report.tokens_checked += 1
                continue
            report.first_mismatch = Mismatch(st.step, k, token, reason)
            return
        report.steps_checked += 1


def _set_differs(st: pb.StructuredOutputStep, row: bytes, earlier: allowed_sets.Earlier,
                 report: ReplayReport) -> str:
    """'' when the step recorded no allowed set or one equal to the replayed `row`, else why.
    `earlier`: the trail's sets by step, for a set recorded as a reference to one of them."""
    if st.allowed_set_truncated:
        report.sets_truncated += 1
    if not st.HasField("allowed_set"):
        return ""
    try:
        recorded = allowed_sets.decode(st.allowed_set, st.vocab_size, earlier, st.step)
    except allowed_sets.AllowedSetError as exc:
        return f"the recorded allowed set is not valid: {exc}"
    diff = int.from_bytes(recorded.bitmask, "little") ^ int.from_bytes(row, "little")
    if diff:
        first = (diff & -diff).bit_length() - 1
        side = "allowed" if first in recorded else "not allowed"
        return (f"the recorded allowed set differs from the grammar's row in {diff.bit_count()} "
                f"tokens (first: token {first}, recorded as {side})")
    report.sets_checked += 1
    return ""


def run(trail_arg: str, model: str, fetch: Callable[[str], q.GetTrailResponse],
        trail_id: str | None = None,
        fetch_records: Callable[[str], list[dict[str, Any]]] | None = None,
        ) -> tuple[int, dict[str, Any]]:
    """The subcommand: (exit code, JSON-able result). `fetch` reads a trail by id from the
    agent (the CLI passes one over its authenticated channel, every page of events read);
    `fetch_records`, when given, reads the records of a trail id from Kafka instead."""
    try:
        path = Path(trail_arg)
        if path.is_file():
            trail = load_any_file(path, trail_id)
        elif fetch_records is not None:
            trail = trail_from_records(fetch_records(trail_arg), trail_arg, "Kafka")
        else:
            try:
                trail = fetch(trail_arg)
            except grpc.RpcError as exc:
                raise ReplayError(f"agent: {exc.code().name}: {exc.details()}") from None
        report = replay(trail, model)
    except ReplayError as exc:
        return UNUSABLE, {"proven": False, "error": str(exc)}
    return (PROVEN if report.proven else MISMATCH), report.to_dict()
