"""One request's trail as the store keeps it: a slotted plain object, its events serialised,
its `TrailSummary` built only when asked for (a query, a record, a watch).

Why not keep a TrailSummary and update it per event: setting a protobuf field from Python
costs several times a plain attribute store, every upb message carries its own arena (about
1 KiB resident per trail, invisible to tracemalloc), and the summary duplicated every string
the events already hold. Here a trail keeps, as plain attributes, only what completeness,
the query index and the record need to *decide* on (state, tokens, times, the index keys,
named as in TrailSummary so a query Filter matches a Trail or a summary alike); the
pass-through fields of the HTTP half, of the grammar compilation and of the structured-output
summary are read back from their serialised events (the same bytes objects the trail keeps
in `events`) when the summary is built. `fields()` is the one definition of that summary: the
record's fields (records.record_from_fields) and the protobuf message (`summary`) both come
from it, and a test holds it equal to `records.message_to_dict(summary)`.

Strings many trails share (model, user, tenant, finish reason, backend, source ids) are
interned, and tuples many trails share (source ids, WAL segments) come from the store's
`shared` cache, so a summary trail costs its events plus a few hundred bytes.
"""

from __future__ import annotations

from sys import intern
from typing import Any

from google.protobuf import json_format

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.model.record import FIELD_MAP, message_to_dict

INT32_MAX = (1 << 31) - 1
UINT32_MAX = (1 << 32) - 1
#: An engine request that has not finished yet, in `engine_output_tokens`.
UNFINISHED = -1
_ADDED, _SCHEDULED, _PREEMPTED = (pb.LIFECYCLE_PHASE_ADDED, pb.LIFECYCLE_PHASE_SCHEDULED,
                                  pb.LIFECYCLE_PHASE_PREEMPTED)
_FINISHED, _ABORTED = pb.LIFECYCLE_PHASE_FINISHED, pb.LIFECYCLE_PHASE_ABORTED

_STATE_NAMES = {v.number: v.name for v in q.TrailState.DESCRIPTOR.values}
_LEVEL_NAMES = {v.number: v.name for v in pb.AuditLevel.DESCRIPTOR.values}
_FINALISED_NAMES = {v.number: v.name for v in q.FinalisedBy.DESCRIPTOR.values}
_HALF_NAMES = {v.number: v.name for v in q.TrailHalf.DESCRIPTOR.values}
_AUTH_NAMES = {v.number: v.name for v in pb.AuthStatus.DESCRIPTOR.values}
_SOURCE_NAMES = {v.number: v.name for v in pb.IdentitySource.DESCRIPTOR.values}
#: TrailSummary.auth_status, the string schema-2 readers know: AuthStatus's name in lower case
#: without its prefix ("" for unspecified). Its reverse reads the string a hook older than
#: HttpRequest.auth_decision sends.
_AUTH_TEXT = {v.number: "" if v.number == 0 else v.name.removeprefix("AUTH_STATUS_").lower()
              for v in pb.AuthStatus.DESCRIPTOR.values}
_AUTH_FROM_TEXT = {text: number for number, text in _AUTH_TEXT.items() if text}
#: Read-only defaults for a half that did not arrive.
_NO_HTTP = pb.HttpRequest()
_NO_GRAMMAR = pb.GrammarCompiled()
_NO_STRUCTURED_OUTPUT = message_to_dict(pb.StructuredOutputSummary())
_NO_PROVENANCE = message_to_dict(pb.ModelProvenance())
_NO_ADAPTER = message_to_dict(pb.LoraAdapter())
_NO_SAMPLING = message_to_dict(pb.SamplingParameters())
_NO_CONTENT = message_to_dict(q.SealedContent())
#: The ADDED event's parts a record carries (RequestLifecycle field -> record field).
_ADDED_PARTS = (("provenance", "model_provenance", _NO_PROVENANCE),
                ("lora_adapter", "lora_adapter", _NO_ADAPTER),
                ("sampling", "sampling", _NO_SAMPLING))


class Trail:
    """The trail of one request (see the module docstring)."""

    __slots__ = (  # noqa: RUF023 - grouped by concern, in the order __init__ documents them
        # -- identity, storage and completeness bookkeeping --
        "request_id", "events", "event_bytes", "nbytes", "expects_http", "has_http",
        "http_usage", "half_complete_at", "published", "pending_revision", "segments",
        "lingering",
        # -- what the summary is built from (TrailSummary's names) --
        "state", "created_unix_ms", "finished_unix_ms", "revision", "audit_level", "model",
        "source_ids", "engine_request_ids", "engine_output_tokens", "prompt_tokens",
        "completion_tokens", "max_tokens", "finish_reason", "preemptions", "latency_ms",
        "num_events", "truncated_events", "grammar_backend", "user", "tenant",
        "client_request_id", "status_code", "finalised_by", "incomplete",
        # -- the latest serialised event of each kind the summary reads fields from --
        "http_event", "grammar_event", "so_event", "added_event",
        # -- the prompt and output sealed under a content key (records/content.py), or None --
        "content",
        # -- owned by the query index (trail_index.py): where it filed this trail --
        "index_seq", "index_keys", "index_final", "index_told",
    )

    def __init__(self, request_id: str, created_unix_ms: int, audit_level: int,
                 revision: int = 0, expects_http: bool = False) -> None:
        self.request_id = request_id
        #: Serialised `pb.Event`s, in arrival order (bytes: a parsed sub-message would keep
        #: its whole batch's protobuf arena alive). A tuple, grown once per batch: the
        #: garbage collector stops tracking a tuple of bytes, it walks every list.
        self.events: tuple[bytes, ...] = ()
        #: Accounted size of the stored events (serialised + per-event overhead).
        self.event_bytes = 0
        #: What this trail counts against the store's byte cap.
        self.nbytes = 0
        self.expects_http = expects_http
        self.has_http = False
        #: The HTTP half carried usage (what the client was told): it wins over engine counts.
        self.http_usage = False
        #: When the first half became complete (monotonic); the linger counts from here.
        self.half_complete_at: float | None = None
        #: A record of the current revision was written.
        self.published = False
        #: Events arrived after the last record: a revision is owed.
        self.pending_revision = False
        #: WAL segments holding this trail's events, until its record is written.
        self.segments: tuple[int, ...] = ()
        #: Queued in the store's linger queue (waiting for its other half).
        self.lingering = False
        self.state: int = q.TRAIL_STATE_ACTIVE
        self.created_unix_ms = created_unix_ms
        self.finished_unix_ms = 0
        self.revision = revision
        self.audit_level = audit_level
        self.model = ""
        self.source_ids: tuple[str, ...] = ()
        #: Engine requests (one per sample) and the tokens each produced once it finished
        #: (UNFINISHED before), in the order they were first seen.
        self.engine_request_ids: tuple[str, ...] = ()
        self.engine_output_tokens: tuple[int, ...] = ()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.max_tokens = 0
        self.finish_reason = ""
        self.preemptions = 0
        self.latency_ms = 0.0
        self.num_events = 0
        self.truncated_events = 0
        self.grammar_backend = ""
        self.user = ""
        self.tenant = ""
        self.client_request_id = ""
        self.status_code = 0
        self.finalised_by: int = q.FINALISED_BY_UNSPECIFIED
        self.incomplete: tuple[int, ...] = ()
        self.http_event: bytes | None = None
        self.grammar_event: bytes | None = None
        self.so_event: bytes | None = None
        #: The first ADDED lifecycle event with the model's provenance, the LoRA adapter and
        #: the sampling parameters (the samples of n > 1 share them).
        self.added_event: bytes | None = None
        #: The sealed prompt and output (SealedContent's fields) once the record sealed them:
        #: the HTTP half in memory then holds neither (ingest/recorder.py).
        self.content: dict[str, Any] | None = None
        #: The index's sequence number (0: not indexed), the keys it filed the trail under
        #: and whether it counted the trail as final.
        self.index_seq = 0
        self.index_keys: tuple[object, ...] = ()
        self.index_final = False
        #: The revision whose record watchers were last told of (-1: none yet).
        self.index_told = -1

    # -- applying events (called by the store) ---------------------------------------------
    def apply_lifecycle(self, event: pb.Event, raw: bytes = b"") -> None:
        lc = event.lifecycle
        engine_id = event.request_id
        ids = self.engine_request_ids
        if engine_id in ids:
            i = ids.index(engine_id)
        else:
            i = len(ids)
            self.engine_request_ids = (*ids, engine_id)
            self.engine_output_tokens = (*self.engine_output_tokens, UNFINISHED)
        phase = lc.phase
        if phase == _SCHEDULED:  # the most frequent with ADDED; nothing to note
            return
        if phase == _ADDED:
            if not self.http_usage:
                self.prompt_tokens = lc.num_prompt_tokens
            self.max_tokens = lc.max_tokens
            if raw and self.added_event is None and (
                    lc.HasField("provenance") or lc.HasField("sampling")):
                self.added_event = raw
            if not self.expects_http and lc.external_request_id:
                # Offline: the caller's id (RequestOutput.request_id) is what it can search
                # by; a served trail's is the client's X-Request-Id, from its HTTP half.
                self.client_request_id = lc.external_request_id
        elif phase == _PREEMPTED:
            self.preemptions += 1
        elif phase in (_FINISHED, _ABORTED):
            tokens = self.engine_output_tokens
            # Validation clamps counts at 0, so a finished one is never UNFINISHED.
            self.engine_output_tokens = tokens = (*tokens[:i], lc.num_output_tokens,
                                                  *tokens[i + 1:])
            self.finish_reason = intern(lc.finish_reason)
            t_ns = event.time_unix_nano
            self.finished_unix_ms = max(self.finished_unix_ms, t_ns // 1_000_000)
            if lc.max_tokens:
                self.max_tokens = lc.max_tokens
            if not self.http_usage:
                # No usage reached the client (offline, or it was aborted): what the engine
                # processed is the cost; the samples of n > 1 share one prompt.
                self.prompt_tokens = lc.num_prompt_tokens
                # Saturates: each sample's count fits int32, their sum may not.
                self.completion_tokens = (tokens[0] if len(tokens) == 1 else
                                          min(sum(t for t in tokens if t > 0), INT32_MAX))
            if not self.has_http:
                self.latency_ms = (t_ns / 1e6) - self.created_unix_ms
            if lc.status == "FINISHED_ERROR":
                self.state = q.TRAIL_STATE_FAILED
            elif phase == _ABORTED and self.state != q.TRAIL_STATE_FAILED:
                self.state = q.TRAIL_STATE_ABORTED

    def apply_grammar(self, event: pb.Event, raw: bytes) -> None:
        self.grammar_backend = intern(event.grammar_compiled.backend)
        self.grammar_event = raw

    def apply_so_summary(self, event: pb.Event, raw: bytes) -> None:
        self.so_event = raw
        if not self.grammar_backend:
            self.grammar_backend = intern(event.so_summary.backend)

    def apply_http(self, event: pb.Event, raw: bytes) -> None:
        """The HTTP half. records.FIELD_MAP lists where every field of HttpRequest goes (a
        test enforces that none is dropped); those not kept here are read from `raw`."""
        h = event.http
        self.has_http = True
        self.http_event = raw
        if h.model:
            self.model = intern(h.model)
        self.user, self.tenant = intern(h.user), intern(h.tenant)
        self.client_request_id = h.client_request_id
        self.status_code = status = h.status_code
        self.latency_ms = latency = h.latency_ms
        if h.prompt_tokens or h.completion_tokens:
            # What the client was told (and billed) is the record of truth.
            self.http_usage = True
            self.prompt_tokens, self.completion_tokens = h.prompt_tokens, h.completion_tokens
        end_ms = (event.time_unix_nano // 1_000_000) + int(latency)
        self.finished_unix_ms = max(self.finished_unix_ms, end_ms)
        if status >= 400 and self.state in (q.TRAIL_STATE_ACTIVE, q.TRAIL_STATE_INCOMPLETE):
            self.state = q.TRAIL_STATE_FAILED

    def engine_done(self) -> bool:
        return bool(self.engine_request_ids) and UNFINISHED not in self.engine_output_tokens

    # -- the summary, built when needed ----------------------------------------------------
    def fields(self) -> dict[str, Any]:
        """Every TrailSummary field, as records.message_to_dict gives it (enum names,
        defaults included): the record's body and the source of `summary`."""
        h = pb.Event.FromString(self.http_event).http if self.http_event else _NO_HTTP
        g = (pb.Event.FromString(self.grammar_event).grammar_compiled if self.grammar_event
             else _NO_GRAMMAR)
        so = (message_to_dict(pb.Event.FromString(self.so_event).so_summary) if self.so_event
              else dict(_NO_STRUCTURED_OUTPUT))
        auth = h.auth_decision or _AUTH_FROM_TEXT.get(h.auth_status, pb.AUTH_STATUS_UNSPECIFIED)
        fields = {
            "request_id": self.request_id,
            "engine_request_ids": list(self.engine_request_ids),
            "state": _STATE_NAMES[self.state],
            "created_unix_ms": self.created_unix_ms,
            "finished_unix_ms": self.finished_unix_ms,
            "model": self.model,
            "user": self.user,
            "client_ip": h.client_ip,
            "status_code": self.status_code,
            "auth_status": _AUTH_TEXT.get(auth, ""),
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms": float(self.latency_ms),
            "ttft_ms": h.ttft_ms,
            "grammar_backend": self.grammar_backend,
            "grammar_spec_type": g.spec_type,
            "grammar_error": g.error,
            "structured_output": so,
            "audit_level": _LEVEL_NAMES[self.audit_level],
            "num_events": min(self.num_events, INT32_MAX),
            "prompt": h.prompt,
            "output": h.output,
            "api_key_sha256": h.api_key_sha256,
            "error": h.error,
            "stream": h.stream,
            "preemptions": min(self.preemptions, INT32_MAX),
            "tenant": self.tenant,
            "client_disconnected": h.client_disconnected,
            "client_request_id": self.client_request_id,
            "revision": min(self.revision, UINT32_MAX),
            "finalised_by": _FINALISED_NAMES[self.finalised_by],
            "incomplete": [_HALF_NAMES[half] for half in self.incomplete],
            "source_ids": list(self.source_ids),
            "http_method": h.method,
            "http_path": h.path,
            "user_agent": h.user_agent,
            "traceparent": h.traceparent,
            "response_bytes": h.response_bytes,
            "vllm_request_id": h.vllm_request_id,
            "grammar_compile_ms": g.compile_ms,
            "grammar_spec_sha256": g.spec_sha256,
            "max_tokens": self.max_tokens,
            "capture_policy": h.capture_policy,
            "truncated_events": min(self.truncated_events, INT32_MAX),
            "auth_decision": _AUTH_NAMES[auth],
            "user_source": _SOURCE_NAMES[h.user_source],
            "tenant_source": _SOURCE_NAMES[h.tenant_source],
            "claimed_user": h.claimed_user,
            "ignored_identity_headers": list(h.ignored_identity_headers),
            "content_signals": (message_to_dict(h.content_signals)
                                if h.HasField("content_signals") else None),
            "content_signals_unscanned_chars": h.content_signals_unscanned_chars,
        }
        fields.update(self._added_fields())
        fields["content"] = dict(self.content) if self.content else dict(_NO_CONTENT)
        return fields

    def _added_fields(self) -> dict[str, Any]:
        """model_provenance, lora_adapter and sampling, from the ADDED event (defaults when
        none carried them)."""
        if self.added_event is None:
            return {target: dict(empty) for _, target, empty in _ADDED_PARTS}
        lc = pb.Event.FromString(self.added_event).lifecycle
        return {target: message_to_dict(getattr(lc, part)) for part, target, _ in _ADDED_PARTS}

    @property
    def summary(self) -> q.TrailSummary:
        """A fresh TrailSummary of the trail as it is now (a snapshot: later events do not
        change it)."""
        return q.TrailSummary(**self.fields())


#: HttpRequest field -> the record field it went to (records.FIELD_MAP), for `from_record`.
_HTTP_FROM_RECORD = {field: target for field, target in FIELD_MAP["HttpRequest"].items()
                     if isinstance(target, str)}
_GRAMMAR_FROM_RECORD = {"backend": "grammar_backend", "spec_type": "grammar_spec_type",
                        "compile_ms": "grammar_compile_ms", "error": "grammar_error",
                        "spec_sha256": "grammar_spec_sha256"}


def from_record(record: dict[str, Any]) -> Trail:
    """The trail a forced record was written from, as far as the record tells it: `fields()`
    of the result gives the record's fields again, its events are the record's grammar
    events, and which halves it had comes from `incomplete`, so a late half completes it.
    (An engine half that was complete counts its total under its first request: a record
    does not hold per-sample output tokens; a missing one counts every request unfinished.)
    Used at start for the record log's newest forced trails (trails.remember_recorded)."""
    missing = {q.TrailHalf.Value(name) for name in record.get("incomplete", ())}
    engine_ids = tuple(record.get("engine_request_ids", ()))
    trail = Trail(str(record["request_id"]), int(record.get("created_unix_ms", 0)),
                  pb.AuditLevel.Value(record.get("audit_level", "AUDIT_LEVEL_UNSPECIFIED")),
                  int(record.get("revision", 0)))
    http_present = bool(record.get("http_method") or record.get("status_code"))
    trail.has_http = q.TRAIL_HALF_HTTP not in missing and http_present
    trail.expects_http = q.TRAIL_HALF_HTTP in missing or trail.has_http
    trail.published = True
    trail.state = q.TrailState.Value(record["state"])
    trail.finished_unix_ms = int(record.get("finished_unix_ms", 0))
    trail.model = intern(str(record.get("model", "")))
    trail.source_ids = tuple(intern(str(s)) for s in record.get("source_ids", ()))
    trail.engine_request_ids = engine_ids
    if q.TRAIL_HALF_ENGINE in missing:
        trail.engine_output_tokens = (UNFINISHED,) * len(engine_ids)
    elif engine_ids:
        trail.engine_output_tokens = (int(record.get("completion_tokens", 0)),
                                      *(0,) * (len(engine_ids) - 1))
    trail.prompt_tokens = int(record.get("prompt_tokens", 0))
    trail.completion_tokens = int(record.get("completion_tokens", 0))
    trail.http_usage = trail.has_http and bool(trail.prompt_tokens or trail.completion_tokens)
    trail.max_tokens = int(record.get("max_tokens", 0))
    trail.finish_reason = intern(str(record.get("finish_reason", "")))
    trail.preemptions = int(record.get("preemptions", 0))
    trail.latency_ms = float(record.get("latency_ms", 0.0))
    trail.num_events = int(record.get("num_events", 0))
    trail.truncated_events = int(record.get("truncated_events", 0))
    trail.grammar_backend = intern(str(record.get("grammar_backend", "")))
    trail.user = intern(str(record.get("user", "")))
    trail.tenant = intern(str(record.get("tenant", "")))
    trail.client_request_id = str(record.get("client_request_id", ""))
    trail.status_code = int(record.get("status_code", 0))
    trail.finalised_by = q.FinalisedBy.Value(record["finalised_by"])
    trail.incomplete = tuple(q.TrailHalf.Value(name) for name in record.get("incomplete", ()))
    if trail.has_http:
        http = json_format.ParseDict(
            {field: record[target] for field, target in _HTTP_FROM_RECORD.items()
             if target in record}, pb.HttpRequest(), ignore_unknown_fields=True)
        trail.http_event = pb.Event(request_id=trail.request_id, http=http).SerializeToString()
    grammar = {field: record[target] for field, target in _GRAMMAR_FROM_RECORD.items()
               if record.get(target)}
    if set(grammar) - {"backend"}:
        trail.grammar_event = pb.Event(
            request_id=trail.request_id,
            grammar_compiled=json_format.ParseDict(grammar, pb.GrammarCompiled())
        ).SerializeToString()
    so = record.get("structured_output")
    if so and so != _NO_STRUCTURED_OUTPUT:
        trail.so_event = pb.Event(
            request_id=trail.request_id,
            so_summary=json_format.ParseDict(so, pb.StructuredOutputSummary(),
                                             ignore_unknown_fields=True)
        ).SerializeToString()
    added = {part: record[target] for part, target, empty in _ADDED_PARTS
             if record.get(target) and record[target] != empty}
    if added:
        lifecycle = json_format.ParseDict(added, pb.RequestLifecycle(), ignore_unknown_fields=True)
        lifecycle.phase = pb.LIFECYCLE_PHASE_ADDED
        trail.added_event = pb.Event(request_id=trail.request_id,
                                     lifecycle=lifecycle).SerializeToString()
    trail.events = tuple(json_format.ParseDict(event, pb.Event(), ignore_unknown_fields=True)
                         .SerializeToString() for event in record.get("grammar_events") or ())
    content = record.get("content")
    if isinstance(content, dict) and content.get("scheme"):
        trail.content = dict(content)
    return trail
