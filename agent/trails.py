"""Per-request trails: assembled from engine and HTTP events, bounded, and finalised once.

A trail is *final* when an offline request finished, or when a served request has both its
HTTP half and every engine half finished (an HTTP error needs no engine half), or when
`linger_seconds` passed since its first half arrived. Final trails are handed to `on_final`
exactly once; late events still update the stored trail and are counted. Each trail notes the
WAL segments holding its events until its record is delivered (see `delivered`), so the WAL
keeps exactly what a restart would need to publish again.

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

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q

from .correlate import trail_id_for_engine_request

INT32_MAX = (1 << 31) - 1
FINAL = (q.TRAIL_STATE_FINISHED, q.TRAIL_STATE_ABORTED, q.TRAIL_STATE_FAILED)
#: Python overhead of a trail beyond its serialised content (the Trail object, its summary
#: message, dict/set members, the store's entry), measured as resident growth per trail.
TRAIL_OVERHEAD_BYTES = 1024
#: Overhead of one stored event beyond its serialised bytes (bytes object + list slot).
EVENT_OVERHEAD_BYTES = 48


@dataclass
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
    first_seen: float = field(default_factory=time.monotonic)
    published: bool = False
    #: Tokens each engine request (one per sample) produced, as it finished.
    engine_output_tokens: dict[str, int] = field(default_factory=dict)
    #: WAL segments holding this trail's events, until its record is delivered downstream.
    segments: set[int] = field(default_factory=set)


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
        self._trails: OrderedDict[str, Trail] = OrderedDict()
        self.counters: Counter[str] = Counter()
        self.finished_by_state: Counter[str] = Counter()
        #: Undelivered trails per WAL segment: a segment is reclaimable at zero.
        self.segment_refs: Counter[int] = Counter()

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
        for request_id, events in groups.items():
            kinds = [event.WhichOneof("body") for event in events]
            if kinds[0] == "http":
                trail_id, expects_http = request_id, True
            else:
                trail_id, expects_http = trail_id_for_engine_request(request_id)
            trail = self._trail(trail_id, expects_http, events[0].time_unix_nano)
            if trail.published:
                self.counters["late_events"] += len(events)
            elif segment not in trail.segments:
                trail.segments.add(segment)
                self.segment_refs[segment] += 1
            if not trail.summary.model and batch.model:
                trail.summary.model = batch.model
            kept = [e.SerializeToString() for e in events[:self.max_events - len(trail.events)]]
            trail.events.extend(kept)
            trail.event_bytes += sum(map(len, kept)) + EVENT_OVERHEAD_BYTES * len(kept)
            if len(kept) < len(events):
                self.counters["events_truncated"] += len(events) - len(kept)
            trail.summary.num_events += len(events)
            apply_event = self._apply_event
            for event, kind in zip(events, kinds, strict=True):
                if kind != "so_step":  # the bulk at level full; only stored
                    apply_event(trail, event, kind)
            touched.append(trail)
        for trail in touched:
            self._resize(trail)
        for trail in touched:
            self._maybe_finalise(trail)
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
                                     created_unix_ms=created)
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
            elif lc.phase == pb.LIFECYCLE_PHASE_PREEMPTED:
                s.preemptions += 1
            elif lc.phase in (pb.LIFECYCLE_PHASE_FINISHED, pb.LIFECYCLE_PHASE_ABORTED):
                trail.engine_finished.add(event.request_id)
                s.finish_reason = lc.finish_reason
                s.finished_unix_ms = max(s.finished_unix_ms, event.time_unix_nano // 1_000_000)
                trail.engine_output_tokens[event.request_id] = lc.num_output_tokens
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
                elif lc.phase == pb.LIFECYCLE_PHASE_ABORTED:
                    s.state = q.TRAIL_STATE_ABORTED
        elif kind == "grammar_compiled":
            g = event.grammar_compiled
            s.grammar_backend, s.grammar_spec_type, s.grammar_error = g.backend, g.spec_type, g.error
        elif kind == "so_summary":
            s.structured_output.CopyFrom(event.so_summary)
            if not s.grammar_backend:
                s.grammar_backend = event.so_summary.backend
        elif kind == "http":
            self._apply_http(trail, event)

    @staticmethod
    def _apply_http(trail: Trail, event: pb.Event) -> None:
        h, s = event.http, trail.summary
        trail.has_http = True
        s.model = h.model or s.model
        s.user, s.client_ip, s.status_code = h.user, h.client_ip, h.status_code
        s.auth_status, s.api_key_sha256, s.stream = h.auth_status, h.api_key_sha256, h.stream
        s.prompt, s.output, s.error = h.prompt, h.output, h.error
        s.latency_ms, s.ttft_ms = h.latency_ms, h.ttft_ms
        s.tenant, s.client_disconnected = h.tenant, h.client_disconnected
        if h.prompt_tokens or h.completion_tokens:
            # What the client was told (and billed) is the record of truth.
            trail.http_usage = True
            s.prompt_tokens, s.completion_tokens = h.prompt_tokens, h.completion_tokens
        end_ms = (event.time_unix_nano // 1_000_000) + int(h.latency_ms)
        s.finished_unix_ms = max(s.finished_unix_ms, end_ms)
        if h.status_code >= 400 and s.state == q.TRAIL_STATE_ACTIVE:
            s.state = q.TRAIL_STATE_FAILED

    # -- finalisation ----------------------------------------------------------------------
    def _complete(self, trail: Trail) -> bool:
        engines = set(trail.summary.engine_request_ids)
        engine_done = bool(engines) and engines <= trail.engine_finished
        if not trail.expects_http:
            return engine_done
        if not trail.has_http:
            return False
        return trail.summary.status_code >= 400 or engine_done

    def _maybe_finalise(self, trail: Trail, force: bool = False) -> None:
        if trail.published or not (force or self._complete(trail)):
            return
        s = trail.summary
        if s.state == q.TRAIL_STATE_ACTIVE:
            s.state = q.TRAIL_STATE_FINISHED
        trail.published = True
        self.finished_by_state[q.TrailState.Name(s.state)[len("TRAIL_STATE_"):].lower()] += 1
        if force:
            self.counters["finalised_by_linger"] += 1
        self.on_final(trail)

    def delivered(self, trail: Trail) -> None:
        """The trail's record reached its destination (or its loss was counted): the WAL
        segments that held it for a replay need not any more."""
        for segment in trail.segments:
            self.segment_refs[segment] -= 1
            if self.segment_refs[segment] <= 0:
                del self.segment_refs[segment]
        trail.segments.clear()

    def sweep(self, now: float | None = None) -> None:
        """Finalises trails whose other half did not arrive within linger_seconds."""
        now = time.monotonic() if now is None else now
        for trail in list(self._trails.values()):
            if not trail.published and now - trail.first_seen >= self.linger_seconds:
                self._maybe_finalise(trail, force=True)

    def flush(self) -> None:
        """At shutdown: everything still open is finalised with what it has."""
        for trail in list(self._trails.values()):
            self._maybe_finalise(trail, force=True)

    def _over_cap(self) -> bool:
        return len(self._trails) > self.max_trails or self.bytes > self.max_bytes

    def _evict(self) -> None:
        """Evicts until both caps hold: oldest final trails first, then oldest active ones.

        The newest trail is never evicted for bytes (a single trail larger than the cap is
        bounded by `max_events` instead), so the trail just written stays queryable."""
        while self._over_cap() and len(self._trails) > 1:
            victim = next((k for k, t in self._trails.items() if t.published), None)
            if victim is not None:
                self._remove(victim)
                self.counters["evicted_final"] += 1
                continue
            trail_id, trail = next(iter(self._trails.items()))
            self._remove(trail_id)
            # An active trail pushed out is still recorded downstream with what it had.
            self._maybe_finalise(trail, force=True)
            self.counters["evicted_active"] += 1

    def _remove(self, trail_id: str) -> None:
        trail = self._trails.pop(trail_id)
        self.bytes -= trail.nbytes
        self.counters["evicted_bytes"] += trail.nbytes
