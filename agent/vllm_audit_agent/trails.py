"""Per-request trails: assembled from engine and HTTP events, bounded, recorded once per
revision.

Identity. A served request's trail id is the id the hook's middleware gave vLLM (unique per
request, never the client's X-Request-Id, which is kept as `client_request_id`); engine
events join it by vLLM's id prefix (correlate.py). Offline requests use vLLM's own id.

Completeness. A trail is *complete* when an offline request finished, or when a served
request has its HTTP half and every engine half finished (an HTTP error needs no engine
half). Once one half is complete the other has `linger_seconds` to arrive; past that the
trail is recorded anyway, saying which half is missing (`incomplete`, `finalised_by=LINGER`,
state INCOMPLETE when the engine half is the missing one). A trail pushed out of memory is
recorded with `finalised_by=EVICTION`. Events that arrive after a record was written are
applied and produce a *revision*: the same trail id with the next `revision`, written once
the trail is complete again or its linger passed, so a consumer keeps the newest revision and
never mistakes a forced record for the real one. At shutdown nothing is forced: open trails
stay in the WAL and are finished after the restart (a made-up record would share its id
with the real one that follows).

Each trail notes the WAL segments holding its events until its record is written (see
`delivered`), so the WAL keeps exactly what a restart would need.

Memory is bounded by count and by bytes: at most `max_trails` trails and about `max_bytes`
bytes of them (oldest final trails evicted first, then oldest active ones, each counted by
reason), and at most `max_events` events per trail (counted). Events are kept serialised:
a parsed sub-message would keep its whole batch's protobuf arena alive, which is what made a
level-full trail cost ~97 KiB of resident memory against a few KiB of content. A trail's
size is its serialised events plus its summary plus a fixed per-object overhead; the total
is kept as a running sum (`bytes`), so the cap is checked in O(1) per batch.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q

from .correlate import trail_id_for_engine_request

INT32_MAX = (1 << 31) - 1
FINAL = (q.TRAIL_STATE_FINISHED, q.TRAIL_STATE_ABORTED, q.TRAIL_STATE_FAILED,
         q.TRAIL_STATE_INCOMPLETE)
#: TrailSummary.auth_status, the string schema-2 readers know: AuthStatus's name in lower case
#: without its prefix ("" for unspecified). Its reverse reads the string a hook older than
#: HttpRequest.auth_decision sends.
_AUTH_TEXT = {v.number: "" if v.number == 0 else v.name.removeprefix("AUTH_STATUS_").lower()
              for v in pb.AuthStatus.DESCRIPTOR.values}
_AUTH_FROM_TEXT = {text: cast("pb.AuthStatus", number)
                   for number, text in _AUTH_TEXT.items() if text}
#: Python overhead of a trail beyond its serialised content (the Trail object, its summary
#: message, dict/set members, the store's entry), measured as resident growth per trail.
TRAIL_OVERHEAD_BYTES = 1024
#: Overhead of one stored event beyond its serialised bytes (bytes object + list slot).
EVENT_OVERHEAD_BYTES = 48
#: Trail ids whose record was written and which left memory, remembered (bounded) with their
#: next revision, so a half arriving later gets a new revision instead of reusing an id.
REMEMBERED_REVISIONS = 100_000
#: What the observer is told as `removed`: still stored, or how the trail left the store
#: (the numbers are the watch API's WatchEventKind, the one definition of these outcomes).
STORED = q.WATCH_EVENT_KIND_UNSPECIFIED
EVICTED = q.WATCH_EVENT_KIND_EVICTED
DELETED = q.WATCH_EVENT_KIND_DELETED


class TrailOpen(ValueError):
    """Deleting a trail whose latest events have no record yet: its WAL segments are still
    held for it, and dropping it would lose what the record log has not got."""


@dataclass(slots=True)
class Trail:
    summary: q.TrailSummary
    #: Serialised `pb.Event`s, in arrival order (see the module docstring for why bytes).
    events: list[bytes] = field(default_factory=list)
    #: Accounted size of the stored events (serialised + per-event overhead).
    event_bytes: int = 0
    #: What this trail counts against the store's byte cap (events + summary + overhead).
    nbytes: int = 0
    expects_http: bool = False
    has_http: bool = False
    #: The HTTP half carried usage (what the client was told): it wins over engine counts.
    http_usage: bool = False
    engine_finished: set[str] = field(default_factory=set)
    #: When the first half became complete (monotonic); the linger counts from here.
    half_complete_at: float | None = None
    #: A record of the current revision was written.
    published: bool = False
    #: Events arrived after the last record: a revision is owed.
    pending_revision: bool = False
    #: Tokens each engine request (one per sample) produced, as it finished.
    engine_output_tokens: dict[str, int] = field(default_factory=dict)
    #: WAL segments holding this trail's events, until its record is written.
    segments: set[int] = field(default_factory=set)


def state_name(state: int) -> str:
    return q.TrailState.Name(state)[len("TRAIL_STATE_"):].lower()  # type: ignore[arg-type]


class TrailStore:
    def __init__(self, max_trails: int, max_events: int, linger_seconds: float,
                 on_final: Callable[[Trail], None], max_bytes: int = 1 << 62) -> None:
        self.max_trails = max_trails
        self.max_bytes = max_bytes
        #: Running total of every stored trail's `nbytes`.
        self.bytes = 0
        self.max_events = max_events
        self.linger_seconds = linger_seconds
        self.on_final = on_final
        #: The level the agent runs at; stamped on each new trail.
        self.audit_level: int = pb.AUDIT_LEVEL_UNSPECIFIED
        self._trails: OrderedDict[str, Trail] = OrderedDict()
        self._next_revision: OrderedDict[str, int] = OrderedDict()
        self.counters: Counter[str] = Counter()
        self.finished_by_state: Counter[str] = Counter()
        #: Undelivered trails per WAL segment: a segment is reclaimable at zero.
        self.segment_refs: Counter[int] = Counter()
        # -- observer (query index, agent/vllm_audit_agent/trail_index.py) --
        #: Called with (trail, STORED) after a batch touched a trail or it was finalised,
        #: and (trail, EVICTED or DELETED) when it left the store.
        self.on_change: Callable[[Trail, int], None] = _ignore_change
        #: Called once with every trail `clear` removed (after they left the store), so the
        #: observer can drop them in one pass; None: `on_change` per trail.
        self.on_removed_many: Callable[[list[Trail], int], None] | None = None
        self.counters["deleted"] += 0

    def __len__(self) -> int:
        return len(self._trails)

    def get(self, trail_id: str) -> Trail | None:
        return self._trails.get(trail_id)

    def trails(self) -> list[Trail]:
        return list(self._trails.values())

    def active_count(self) -> int:
        return sum(1 for t in self._trails.values() if not t.published)

    def parsed_events(self, trail: Trail) -> list[pb.Event]:
        return [pb.Event.FromString(raw) for raw in trail.events]

    # -- ingest ----------------------------------------------------------------------------
    def apply(self, batch: pb.Batch, segment: int) -> None:
        """Applies a batch stored in WAL `segment` (which then holds its open trails).

        Events are grouped by request id first: a batch holds many events of few requests
        (one per grammar step at level full), so correlation, lookup and the completeness
        check run once per request and batch, not once per event. Completeness is checked
        after the whole batch, so the order of requests inside it does not matter."""
        groups: dict[str, list[pb.Event]] = {}
        for event in batch.events:
            if event.request_id:  # engine stats carry none
                groups.setdefault(event.request_id, []).append(event)
        touched: list[Trail] = []
        now = time.monotonic()
        for request_id, events in groups.items():
            kinds = [event.WhichOneof("body") for event in events]
            if kinds[0] == "http":
                trail_id, expects_http = request_id, True
            else:
                trail_id, expects_http = trail_id_for_engine_request(request_id)
            trail = self._trail(trail_id, expects_http, events[0].time_unix_nano)
            s = trail.summary
            if trail.published:
                # Recorded already: what arrives now goes into a revision, never dropped.
                self.counters["late_events"] += len(events)
                trail.pending_revision = True
                trail.half_complete_at = now
            if segment not in trail.segments:
                trail.segments.add(segment)
                self.segment_refs[segment] += 1
            if batch.source_id and batch.source_id not in s.source_ids:
                s.source_ids.append(batch.source_id)
            if not s.model and batch.model:
                s.model = batch.model
            kept = [e.SerializeToString() for e in events[:self.max_events - len(trail.events)]]
            trail.events.extend(kept)
            trail.event_bytes += sum(map(len, kept)) + EVENT_OVERHEAD_BYTES * len(kept)
            if len(kept) < len(events):
                self.counters["events_truncated"] += len(events) - len(kept)
            s.num_events += len(events)
            apply_event = self._apply_event
            for event, kind in zip(events, kinds, strict=True):
                if event.truncated:
                    s.truncated_events += 1
                if kind != "so_step":  # the bulk at level full; only stored
                    apply_event(trail, event, kind)
            touched.append(trail)
        for trail in touched:
            self._resize(trail)
            if trail.half_complete_at is None and (trail.has_http or self._engine_done(trail)):
                trail.half_complete_at = now
        for trail in touched:
            self._maybe_finalise(trail)
        for trail in touched:
            self.on_change(trail, STORED)  # observer
        self._evict()

    def _resize(self, trail: Trail) -> None:
        size = TRAIL_OVERHEAD_BYTES + trail.event_bytes + trail.summary.ByteSize()
        self.bytes += size - trail.nbytes
        trail.nbytes = size

    def _trail(self, trail_id: str, expects_http: bool, time_unix_nano: int) -> Trail:
        created = time_unix_nano // 1_000_000
        trail = self._trails.get(trail_id)
        if trail is None:
            summary = q.TrailSummary(request_id=trail_id, state=q.TRAIL_STATE_ACTIVE,
                                     created_unix_ms=created,
                                     audit_level=self.audit_level)  # type: ignore[arg-type]
            revision = self._next_revision.pop(trail_id, 0)
            if revision:
                # Its earlier record left memory: this is a later revision of that trail.
                summary.revision = revision
                self.counters["revisions"] += 1
            trail = Trail(summary, expects_http=expects_http)
            self._trails[trail_id] = trail
            self.counters["trails_created"] += 1
        else:
            self._trails.move_to_end(trail_id)
            trail.expects_http = trail.expects_http or expects_http
            if created and created < trail.summary.created_unix_ms:
                trail.summary.created_unix_ms = created
        return trail

    def _apply_event(self, trail: Trail, event: pb.Event, kind: str | None) -> None:
        s = trail.summary
        if kind == "lifecycle":
            lc = event.lifecycle
            if event.request_id not in s.engine_request_ids:
                s.engine_request_ids.append(event.request_id)
            if lc.phase == pb.LIFECYCLE_PHASE_ADDED:
                if not trail.http_usage:
                    s.prompt_tokens = lc.num_prompt_tokens
                s.max_tokens = lc.max_tokens
            elif lc.phase == pb.LIFECYCLE_PHASE_PREEMPTED:
                s.preemptions += 1
            elif lc.phase in (pb.LIFECYCLE_PHASE_FINISHED, pb.LIFECYCLE_PHASE_ABORTED):
                trail.engine_finished.add(event.request_id)
                s.finish_reason = lc.finish_reason
                s.finished_unix_ms = max(s.finished_unix_ms, event.time_unix_nano // 1_000_000)
                trail.engine_output_tokens[event.request_id] = lc.num_output_tokens
                if lc.max_tokens:
                    s.max_tokens = lc.max_tokens
                if not trail.http_usage:
                    # No usage reached the client (offline, or it was aborted): what the
                    # engine processed is the cost; the samples of n > 1 share one prompt.
                    s.prompt_tokens = lc.num_prompt_tokens
                    # Saturates: each sample's count fits int32, their sum may not.
                    s.completion_tokens = min(sum(trail.engine_output_tokens.values()),
                                              INT32_MAX)
                if not trail.has_http:
                    s.latency_ms = (event.time_unix_nano / 1e6) - s.created_unix_ms
                if lc.status == "FINISHED_ERROR":
                    s.state = q.TRAIL_STATE_FAILED
                elif lc.phase == pb.LIFECYCLE_PHASE_ABORTED and s.state != q.TRAIL_STATE_FAILED:
                    s.state = q.TRAIL_STATE_ABORTED
        elif kind == "grammar_compiled":
            g = event.grammar_compiled
            s.grammar_backend, s.grammar_spec_type, s.grammar_error = g.backend, g.spec_type, g.error
            s.grammar_compile_ms, s.grammar_spec_sha256 = g.compile_ms, g.spec_sha256
        elif kind == "so_summary":
            so = event.so_summary
            s.structured_output.CopyFrom(so)
            # Allowed-token sets the hook dropped over its caps (level full-with-allowed-sets).
            self.counters["allowed_sets_dropped_step_cap"] += so.allowed_sets_over_step_cap
            self.counters["allowed_sets_dropped_trail_cap"] += so.allowed_sets_over_trail_cap
            self.counters["allowed_sets_dropped_backlog"] += so.allowed_sets_over_backlog
            if not s.grammar_backend:
                s.grammar_backend = event.so_summary.backend
        elif kind == "http":
            self._apply_http(trail, event)

    @staticmethod
    def _apply_http(trail: Trail, event: pb.Event) -> None:
        """Maps the HTTP half into the summary. records.HTTP_FIELDS lists where every field
        of HttpRequest goes (a test enforces that none is dropped)."""
        h, s = event.http, trail.summary
        trail.has_http = True
        s.model = h.model or s.model
        s.user, s.client_ip, s.status_code = h.user, h.client_ip, h.status_code
        s.auth_status, s.api_key_sha256, s.stream = h.auth_status, h.api_key_sha256, h.stream
        s.prompt, s.output, s.error = h.prompt, h.output, h.error
        s.latency_ms, s.ttft_ms = h.latency_ms, h.ttft_ms
        s.tenant, s.client_disconnected = h.tenant, h.client_disconnected
        s.http_method, s.http_path, s.user_agent = h.method, h.path, h.user_agent
        s.response_bytes, s.vllm_request_id = h.response_bytes, h.vllm_request_id
        s.capture_policy, s.client_request_id = h.capture_policy, h.client_request_id
        s.auth_decision = (h.auth_decision if h.auth_decision else
                           _AUTH_FROM_TEXT.get(h.auth_status, pb.AUTH_STATUS_UNSPECIFIED))
        s.auth_status = _AUTH_TEXT.get(s.auth_decision, "")
        s.user_source, s.tenant_source = h.user_source, h.tenant_source
        s.claimed_user = h.claimed_user
        del s.ignored_identity_headers[:]
        s.ignored_identity_headers.extend(h.ignored_identity_headers)
        if h.prompt_tokens or h.completion_tokens:
            # What the client was told (and billed) is the record of truth.
            trail.http_usage = True
            s.prompt_tokens, s.completion_tokens = h.prompt_tokens, h.completion_tokens
        end_ms = (event.time_unix_nano // 1_000_000) + int(h.latency_ms)
        s.finished_unix_ms = max(s.finished_unix_ms, end_ms)
        if h.status_code >= 400 and s.state in (q.TRAIL_STATE_ACTIVE, q.TRAIL_STATE_INCOMPLETE):
            s.state = q.TRAIL_STATE_FAILED

    # -- finalisation ----------------------------------------------------------------------
    @staticmethod
    def _engine_done(trail: Trail) -> bool:
        engines = set(trail.summary.engine_request_ids)
        return bool(engines) and engines <= trail.engine_finished

    def _missing_halves(self, trail: Trail) -> list[int]:
        """The halves not (yet) complete; empty when the trail is complete."""
        missing: list[int] = []
        if trail.expects_http and not trail.has_http:
            missing.append(q.TRAIL_HALF_HTTP)
        refused = trail.has_http and trail.summary.status_code >= 400  # no engine half comes
        if not refused and not self._engine_done(trail):
            missing.append(q.TRAIL_HALF_ENGINE)
        return missing

    def _maybe_finalise(self, trail: Trail, forced_by: int = q.FINALISED_BY_UNSPECIFIED) -> None:
        """Writes the trail's record (or its next revision) when it is complete, or when
        `forced_by` says why it must be written without a half."""
        if trail.published and not trail.pending_revision:
            return
        missing = self._missing_halves(trail)
        if missing and forced_by == q.FINALISED_BY_UNSPECIFIED:
            return
        s = trail.summary
        revision = trail.published
        if revision:
            s.revision += 1
            self.counters["revisions"] += 1
        if s.state == q.TRAIL_STATE_INCOMPLETE:
            s.state = q.TRAIL_STATE_ACTIVE  # a revision: decide again with what is known now
        if s.state == q.TRAIL_STATE_ACTIVE:
            s.state = (q.TRAIL_STATE_INCOMPLETE if q.TRAIL_HALF_ENGINE in missing
                       else q.TRAIL_STATE_FINISHED)
        del s.incomplete[:]
        s.incomplete.extend(missing)  # type: ignore[arg-type]
        s.finalised_by = (forced_by if missing
                          else q.FINALISED_BY_COMPLETE)  # type: ignore[assignment]
        trail.published = True
        trail.pending_revision = False
        if not revision:
            self.finished_by_state[state_name(s.state)] += 1
        if s.finalised_by != q.FINALISED_BY_COMPLETE:
            self.counters[f"finalised_by_{q.FinalisedBy.Name(s.finalised_by)[13:].lower()}"] += 1
        self.on_final(trail)

    def delivered(self, trail: Trail) -> None:
        """The trail's record was written: the WAL segments that held it for a replay need
        not any more."""
        for segment in trail.segments:
            self.segment_refs[segment] -= 1
            if self.segment_refs[segment] <= 0:
                del self.segment_refs[segment]
        trail.segments.clear()

    def sweep(self, now: float | None = None) -> None:
        """Writes trails one of whose halves is complete and whose other half did not
        arrive within linger_seconds."""
        now = time.monotonic() if now is None else now
        for trail in list(self._trails.values()):
            if ((not trail.published or trail.pending_revision)
                    and trail.half_complete_at is not None
                    and now - trail.half_complete_at >= self.linger_seconds):
                self._maybe_finalise(trail, forced_by=q.FINALISED_BY_LINGER)
                self.on_change(trail, STORED)  # observer

    def open_trails(self) -> int:
        """Trails without a record of their latest events (at shutdown they stay in the WAL
        and are finished after the restart)."""
        return sum(1 for t in self._trails.values() if not t.published or t.pending_revision)

    # -- memory ----------------------------------------------------------------------------
    def _over_cap(self) -> bool:
        return len(self._trails) > self.max_trails or self.bytes > self.max_bytes

    def _evict(self) -> None:
        """Evicts until both caps hold: oldest final trails first, then oldest active ones.

        The newest trail is never evicted for bytes (a single trail larger than the cap is
        bounded by `max_events` instead), so the trail just written stays queryable."""
        while self._over_cap() and len(self._trails) > 1:
            victim = next((k for k, t in self._trails.items()
                           if t.published and not t.pending_revision), None)
            if victim is not None:
                self._remove(victim)
                self.counters["evicted_final"] += 1
                continue
            trail_id, trail = next(iter(self._trails.items()))
            # An active trail pushed out is still recorded with what it had, and says so.
            self._maybe_finalise(trail, forced_by=q.FINALISED_BY_EVICTION)
            self._remove(trail_id)
            self.counters["evicted_active"] += 1

    # -- deletion (the management API; the record log is not touched) ---------------------
    def delete(self, trail_id: str) -> Trail:
        """Removes one final trail from the store. KeyError: no such trail; TrailOpen: its
        latest events are not recorded yet (it stays)."""
        trail = self._trails[trail_id]
        if not trail.published or trail.pending_revision:
            raise TrailOpen(f"trail {trail_id!r} is still open (the record of its latest events "
                            "is not written yet); delete it once it is final")
        self._remove(trail_id, DELETED)
        return trail

    def clear(self) -> tuple[int, int]:
        """Removes every final trail; returns (deleted, kept open)."""
        final = [k for k, t in self._trails.items() if t.published and not t.pending_revision]
        bulk = self.on_removed_many
        removed = [self._remove(trail_id, DELETED, notify=bulk is None) for trail_id in final]
        if bulk is not None:
            bulk(removed, DELETED)
        return len(final), len(self._trails)

    def _remove(self, trail_id: str, how: int = EVICTED, notify: bool = True) -> Trail:
        trail = self._trails.pop(trail_id)
        if notify:
            self.on_change(trail, how)  # observer
        self.bytes -= trail.nbytes
        if how == DELETED:
            self.counters["deleted"] += 1
        else:
            self.counters["evicted_bytes"] += trail.nbytes
        self._next_revision[trail_id] = trail.summary.revision + 1
        if len(self._next_revision) > REMEMBERED_REVISIONS:
            self._next_revision.popitem(last=False)
        return trail


def _ignore_change(trail: Trail, removed: int) -> None:
    pass
