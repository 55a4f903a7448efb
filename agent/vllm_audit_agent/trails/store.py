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
never mistakes a forced record for the real one. A forced trail pushed out of memory before
its missing half came is remembered without its events (bounded by count and bytes): the late
half joins it again, so the revision carries both halves. (Without it the revision held the
late half alone and, waiting for the half that had come long before, was forced again: the
newest revision, the one consumers keep, lacked what the first record had. Seen under 10k
requests/s with the HTTP halves lagging the linger; the store's cap evicts final trails,
forced ones among them, first.) The record log's newest forced trails are remembered the same
way at start (`remember_recorded`), so a half arriving after a restart continues its trail.
At shutdown nothing is forced: open trails stay in the WAL and are finished after the restart
(a made-up record would share its id with the real one that follows).

Each trail notes the WAL segments holding its events until its record is written (see
`delivered`), so the WAL keeps exactly what a restart would need.

Memory is bounded by count and by bytes: at most `max_trails` trails and about `max_bytes`
bytes of them (oldest final trails evicted first, then oldest active ones, each counted by
reason), and at most `max_events` events per trail (counted). A trail is a slotted plain
object with its events serialised and its TrailSummary built only when asked for (trail.py
says why). A trail's size is its serialised events plus a fixed per-object overhead; the
total is kept as a running sum (`bytes`), so the cap is checked in O(1) per batch.

Linger: open trails with one half complete wait in a queue in the order their linger
started, so a sweep costs the trails that are due, not a walk over the whole store; the
agent's sweeper takes them in slices (`sweep(limit=...)`) and lets its loop serve ingest in
between (tens of thousands due at once held the loop for seconds, past the hooks' ack
deadline). Eviction takes the oldest final trail from an index of final trails in O(1)
(searching the store for it walked past every active trail per eviction: quadratic once the
store sat at its cap with tens of thousands of trails waiting for a lagging half).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from sys import intern

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.model.record import GRAMMAR_PROOF_LEVELS
from vllm_audit_agent.model.trail import Trail, from_record
from vllm_audit_agent.model.validation import Classified, classify
from vllm_audit_agent.trails.correlate import trail_id_for_engine_request

__all__ = ["Trail", "TrailStore", "state_name"]

FINAL = (q.TRAIL_STATE_FINISHED, q.TRAIL_STATE_ABORTED, q.TRAIL_STATE_FAILED,
         q.TRAIL_STATE_INCOMPLETE)
#: Python overhead of a trail beyond its serialised events (the Trail object, its engine
#: request ids, the store's and the index's entries), measured as resident growth per trail
#: (scripts/benchmarks.py: ~1.8 KiB for a summary trail whose 4 events take ~0.9 KiB).
TRAIL_OVERHEAD_BYTES = 1024
#: Overhead of one stored event beyond its serialised bytes (bytes object + list slot).
EVENT_OVERHEAD_BYTES = 48
#: Trail ids whose record was written and which left memory, remembered (bounded) with their
#: next revision, so a half arriving later gets a new revision instead of reusing an id.
REMEMBERED_REVISIONS = 100_000
#: Forced (incomplete) trails that left memory, kept without their events so that their late
#: half completes them: at most this many, and at most REMEMBERED_INCOMPLETE_SHARE of the
#: store's byte cap.
REMEMBERED_INCOMPLETE = 200_000
REMEMBERED_INCOMPLETE_SHARE = 0.5
#: What one remembered trail costs beyond the serialised events it still holds (the slotted
#: Trail object, its tuples, the map entry).
REMEMBERED_OVERHEAD_BYTES = 512
#: What the observer is told as `removed`: still stored, or how the trail left the store
#: (the numbers are the watch API's WatchEventKind, the one definition of these outcomes).
STORED = q.WATCH_EVENT_KIND_UNSPECIFIED
EVICTED = q.WATCH_EVENT_KIND_EVICTED
DELETED = q.WATCH_EVENT_KIND_DELETED


class TrailOpen(ValueError):
    """Deleting a trail whose latest events have no record yet: its WAL segments are still
    held for it, and dropping it would lose what the record log has not got."""
#: Distinct shared tuples (source ids, WAL segments) kept before the cache starts afresh.
SHARED_TUPLES = 4096


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
        #: Ids of the final trails (recorded, nothing pending), oldest first: what eviction
        #: takes first, found in O(1).
        self._final: OrderedDict[str, None] = OrderedDict()
        #: Forced trails out of memory, compacted, waiting for their missing half (see the
        #: module docstring), and what they cost.
        self._incomplete: OrderedDict[str, Trail] = OrderedDict()
        self.incomplete_bytes = 0
        #: Open trails one of whose halves is complete, in the order their linger started,
        #: and when it started (the sweep looks at the due ones only; an entry whose trail
        #: moved on is skipped). Two deques, not one of pairs: a pair per trail would be one
        #: more object for the garbage collector to walk.
        self._linger_started: deque[float] = deque()
        self._lingering: deque[Trail] = deque()
        #: Tuples many trails hold alike (source ids, segments), one object each.
        self._tuples: dict[tuple[object, ...], tuple[object, ...]] = {}
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
        for name in ("deleted", "incomplete_rejoined", "incomplete_forgotten",
                     "rebuilt_recorded_continued", "rebuilt_recorded_fragment_dropped"):
            self.counters[name] += 0

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

    def _shared(self, value: tuple[object, ...]) -> tuple[object, ...]:
        tuples = self._tuples
        if len(tuples) >= SHARED_TUPLES:
            tuples.clear()
        return tuples.setdefault(value, value)

    # -- ingest ----------------------------------------------------------------------------
    def apply(self, batch: pb.Batch, segment: int, classified: Classified | None = None
              ) -> None:
        """Applies a batch stored in WAL `segment` (which then holds its open trails);
        `classified`: its events as validation read them (read again when not given).

        Events are grouped by request id first: a batch holds many events of few requests
        (one per grammar step at level full), so correlation, lookup and the completeness
        check run once per request and batch, not once per event. Completeness is checked
        after the whole batch, so the order of requests inside it does not matter."""
        if classified is None:
            classified = classify(batch)
        groups: dict[str, list[tuple[pb.Event, str]]] = {}
        for item, request_id in zip(zip(classified.events, classified.kinds, strict=True),
                                    classified.request_ids, strict=True):
            if request_id:  # engine stats carry none
                group = groups.get(request_id)
                if group is None:
                    groups[request_id] = [item]
                else:
                    group.append(item)
        if not groups:
            return
        touched: list[Trail] = []
        now = time.monotonic()
        source_id, model = intern(batch.source_id), batch.model
        max_events = self.max_events
        counters = self.counters
        for request_id, events in groups.items():
            if events[0][1] == "http":
                trail_id, expects_http = request_id, True
            else:
                trail_id, expects_http = trail_id_for_engine_request(request_id)
            trail = self._trail(trail_id, expects_http, events[0][0].time_unix_nano)
            if trail.published:
                # Recorded already: what arrives now goes into a revision, never dropped.
                counters["late_events"] += len(events)
                trail.pending_revision = True
                self._final.pop(trail_id, None)
                trail.half_complete_at = now
                trail.lingering = False  # its linger starts again
            if segment not in trail.segments:
                trail.segments = self._shared((*trail.segments, segment))  # type: ignore[assignment]
                self.segment_refs[segment] += 1
            if source_id and source_id not in trail.source_ids:
                trail.source_ids = self._shared((*trail.source_ids, source_id))  # type: ignore[assignment]
            if not trail.model and model:
                trail.model = intern(model)
            room = max_events - len(trail.events)
            stored: list[bytes] = []
            added = 0
            truncated = 0
            for event, kind in events:
                raw = event.SerializeToString()
                if room > 0:
                    stored.append(raw)
                    added += len(raw)
                    room -= 1
                else:
                    counters["events_truncated"] += 1
                if event.truncated:
                    truncated += 1
                if kind == "so_step":  # the bulk at level full; only stored
                    continue
                if kind == "lifecycle":
                    trail.apply_lifecycle(event)
                elif kind == "http":
                    trail.apply_http(event, raw)
                elif kind == "so_summary":
                    trail.apply_so_summary(event, raw)
                    # Allowed-token sets the hook dropped over its caps (level
                    # full-with-allowed-sets).
                    so = event.so_summary
                    counters = self.counters
                    counters["allowed_sets_dropped_step_cap"] += so.allowed_sets_over_step_cap
                    counters["allowed_sets_dropped_trail_cap"] += so.allowed_sets_over_trail_cap
                    counters["allowed_sets_dropped_backlog"] += so.allowed_sets_over_backlog
                elif kind == "grammar_compiled":
                    trail.apply_grammar(event, raw)
            if stored:
                trail.events = (*trail.events, *stored) if trail.events else tuple(stored)
            trail.num_events += len(events)
            trail.truncated_events += truncated
            trail.event_bytes += added + EVENT_OVERHEAD_BYTES * len(stored)
            touched.append(trail)
        for trail in touched:
            self._resize(trail)
            if trail.half_complete_at is None and (trail.has_http or trail.engine_done()):
                trail.half_complete_at = now
        for trail in touched:
            self._maybe_finalise(trail)
            if (not trail.lingering and trail.half_complete_at is not None
                    and (not trail.published or trail.pending_revision)):
                trail.lingering = True
                self._linger_started.append(trail.half_complete_at)
                self._lingering.append(trail)
        on_change = self.on_change
        for trail in touched:
            on_change(trail, STORED)  # observer
        self._evict()

    def _resize(self, trail: Trail) -> None:
        size = TRAIL_OVERHEAD_BYTES + trail.event_bytes
        # The latest event of a kind the summary reads is held even when `max_events` cut
        # it from `events`.
        for raw in (trail.http_event, trail.grammar_event, trail.so_event):
            if raw is not None and len(trail.events) >= self.max_events:
                size += len(raw) + EVENT_OVERHEAD_BYTES
        self.bytes += size - trail.nbytes
        trail.nbytes = size

    def _trail(self, trail_id: str, expects_http: bool, time_unix_nano: int) -> Trail:
        created = time_unix_nano // 1_000_000
        trail = self._trails.get(trail_id)
        if trail is None and trail_id in self._incomplete:
            # The rest of a forced trail that left memory: the revision carries both halves.
            trail = self._incomplete.pop(trail_id)
            self.incomplete_bytes -= trail.nbytes
            trail.nbytes = 0  # `_resize` accounts it in the store again
            self._next_revision.pop(trail_id, None)
            self._trails[trail_id] = trail
            self.counters["incomplete_rejoined"] += 1
        if trail is None:
            revision = self._next_revision.pop(trail_id, 0)
            if revision:
                # Its earlier record left memory: this is a later revision of that trail.
                self.counters["revisions"] += 1
            trail = Trail(trail_id, created, self.audit_level, revision, expects_http)
            self._trails[trail_id] = trail
            self.counters["trails_created"] += 1
        else:
            self._trails.move_to_end(trail_id)
            trail.expects_http = trail.expects_http or expects_http
            if created and created < trail.created_unix_ms:
                trail.created_unix_ms = created
        return trail

    # -- finalisation ----------------------------------------------------------------------
    @staticmethod
    def _missing_halves(trail: Trail) -> tuple[int, ...]:
        """The halves not (yet) complete; empty when the trail is complete."""
        http_missing = trail.expects_http and not trail.has_http
        refused = trail.has_http and trail.status_code >= 400  # no engine half comes
        engine_missing = not refused and not trail.engine_done()
        if http_missing:
            return _BOTH if engine_missing else _HTTP
        return _ENGINE if engine_missing else ()

    def _maybe_finalise(self, trail: Trail, forced_by: int = q.FINALISED_BY_UNSPECIFIED) -> None:
        """Writes the trail's record (or its next revision) when it is complete, or when
        `forced_by` says why it must be written without a half."""
        if trail.published and not trail.pending_revision:
            return
        missing = self._missing_halves(trail)
        if missing and forced_by == q.FINALISED_BY_UNSPECIFIED:
            return
        revision = trail.published
        if revision:
            trail.revision += 1
            self.counters["revisions"] += 1
        if trail.state == q.TRAIL_STATE_INCOMPLETE:
            trail.state = q.TRAIL_STATE_ACTIVE  # a revision: decide again with what is known now
        if trail.state == q.TRAIL_STATE_ACTIVE:
            trail.state = (q.TRAIL_STATE_INCOMPLETE if q.TRAIL_HALF_ENGINE in missing
                           else q.TRAIL_STATE_FINISHED)
        trail.incomplete = missing
        trail.finalised_by = forced_by if missing else q.FINALISED_BY_COMPLETE
        trail.published = True
        trail.pending_revision = False
        # Its linger is over (a late half starts another): a final trail keeps no float, and
        # shares its token counts' tuple ((48,) for much of one workload) with others.
        trail.half_complete_at = None
        trail.engine_output_tokens = self._shared(trail.engine_output_tokens)  # type: ignore[assignment]
        self._final[trail.request_id] = None
        self._final.move_to_end(trail.request_id)
        if not revision:
            self.finished_by_state[state_name(trail.state)] += 1
        if trail.finalised_by != q.FINALISED_BY_COMPLETE:
            self.counters[_FINALISED_BY_COUNTER[trail.finalised_by]] += 1
        self.on_final(trail)

    def delivered(self, trail: Trail) -> None:
        """The trail's record was written: the WAL segments that held it for a replay need
        not any more."""
        self.release(self.take_segments(trail))

    @staticmethod
    def take_segments(trail: Trail) -> tuple[int, ...]:
        """The segments holding what the record being written has, taken from the trail
        when the record is made: events arriving before it is durable note their segments
        afresh, so releasing these (`release`) never lets go of what only a later revision
        will record. (The trail object may go on: a revision, a rejoined forced trail.)"""
        segments, trail.segments = trail.segments, ()
        return segments

    def release(self, segments: tuple[int, ...]) -> None:
        refs = self.segment_refs
        for segment in segments:
            refs[segment] -= 1
            if refs[segment] <= 0:
                del refs[segment]

    def sweep(self, now: float | None = None, limit: int | None = None) -> bool:
        """Writes trails one of whose halves is complete and whose other half did not
        arrive within linger_seconds. Looks at the due ones only (the linger queue is in
        start order), so a sweep over a full store costs what is due, not the store. At most
        `limit` trails are written; returns whether more are due (the caller yields its
        loop, then sweeps again)."""
        now = time.monotonic() if now is None else now
        started_at, queue, linger = self._linger_started, self._lingering, self.linger_seconds
        written = 0
        while queue and now - started_at[0] >= linger:
            if limit is not None and written >= limit:
                return True
            started, trail = started_at.popleft(), queue.popleft()
            if (not trail.lingering or trail.half_complete_at != started
                    or self._trails.get(trail.request_id) is not trail):
                continue  # its linger started again, or it left the store
            trail.lingering = False
            if trail.published and not trail.pending_revision:
                continue
            self._maybe_finalise(trail, forced_by=q.FINALISED_BY_LINGER)
            self.on_change(trail, STORED)  # observer
            written += 1
        return False

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
            victim = next(iter(self._final), None)
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
        final = list(self._final)
        bulk = self.on_removed_many
        removed = [self._remove(trail_id, DELETED, notify=bulk is None) for trail_id in final]
        if bulk is not None:
            bulk(removed, DELETED)
        return len(final), len(self._trails)

    def _remove(self, trail_id: str, how: int = EVICTED, notify: bool = True) -> Trail:
        trail = self._trails.pop(trail_id)
        self._final.pop(trail_id, None)
        if notify:
            self.on_change(trail, how)  # observer
        self.bytes -= trail.nbytes
        if how == DELETED:
            self.counters["deleted"] += 1
        else:
            self.counters["evicted_bytes"] += trail.nbytes
        self._next_revision[trail_id] = trail.revision + 1
        if len(self._next_revision) > REMEMBERED_REVISIONS:
            self._next_revision.popitem(last=False)
        if how == EVICTED and trail.incomplete and not trail.pending_revision:
            self._remember_incomplete(trail)
        return trail

    # -- forced trails out of memory (see the module docstring) ----------------------------
    def _remember_incomplete(self, trail: Trail) -> None:
        """Keeps a forced trail that left memory, compacted: its events go unless its record
        carries them (the grammar proof: its revision must carry them again)."""
        if not (trail.grammar_backend and trail.audit_level in GRAMMAR_PROOF_LEVELS):
            trail.events, trail.event_bytes = (), 0
        self._remember(trail)

    def _remember(self, trail: Trail) -> None:
        """The oldest remembered go first past the bounds, counted (a late half of one then
        makes a revision without the half recorded before)."""
        trail_id = trail.request_id
        trail.nbytes = REMEMBERED_OVERHEAD_BYTES + trail.event_bytes + sum(
            len(raw) for raw in (trail.http_event, trail.grammar_event, trail.so_event)
            if raw is not None)
        previous = self._incomplete.pop(trail_id, None)
        if previous is not None:
            self.incomplete_bytes -= previous.nbytes
        self._incomplete[trail_id] = trail
        self.incomplete_bytes += trail.nbytes
        cap = self.max_bytes * REMEMBERED_INCOMPLETE_SHARE
        while self._incomplete and (len(self._incomplete) > REMEMBERED_INCOMPLETE
                                    or self.incomplete_bytes > cap):
            _, old = self._incomplete.popitem(last=False)
            self.incomplete_bytes -= old.nbytes
            self.counters["incomplete_forgotten"] += 1

    def remember_recorded(self, trails: list[tuple[str, int, dict[str, object] | None]]
                          ) -> None:
        """Trails recorded before this start (read back from the record log, oldest first:
        id, newest revision, that record when it was forced): a half of one arriving now
        continues it with the next revision (a new revision 0 would put a second, different
        record under an event_id already published), and a forced one is remembered as if
        it had just left memory, so the half completes it. A trail the WAL replay rebuilt
        without completing it was forced before: it takes that record's revision and state,
        so its missing half makes the next revision. One whose newest record was whole is a
        fragment of it (a WAL segment held for another trail kept one half, the other half's
        segment went): the log has it all, so the fragment goes (counted) instead of being
        forced later into a second, different record under the same event_id."""
        for trail_id, revision, forced in trails:
            rebuilt = self._trails.get(trail_id)
            if rebuilt is not None:
                if rebuilt.published:
                    continue
                if forced is not None:
                    self._as_recorded(rebuilt, from_record(forced))
                    continue
                self._drop_fragment(rebuilt)
            self._next_revision[trail_id] = revision + 1
            self._next_revision.move_to_end(trail_id)
            if len(self._next_revision) > REMEMBERED_REVISIONS:
                self._next_revision.popitem(last=False)
            if forced is not None:
                trail = from_record(forced)
                trail.event_bytes = sum(len(raw) + EVENT_OVERHEAD_BYTES for raw in trail.events)
                self._remember(trail)

    def _drop_fragment(self, trail: Trail) -> None:
        self.delivered(trail)  # its record is in the log: the WAL need not keep it
        del self._trails[trail.request_id]
        self.bytes -= trail.nbytes
        self.on_change(trail, EVICTED)  # observer
        self.counters["rebuilt_recorded_fragment_dropped"] += 1

    def _as_recorded(self, trail: Trail, recorded: Trail) -> None:
        trail.revision, trail.state = recorded.revision, recorded.state
        trail.finalised_by, trail.incomplete = recorded.finalised_by, recorded.incomplete
        trail.published, trail.pending_revision = True, False
        self._final[trail.request_id] = None
        self.delivered(trail)  # its record is in the log: the WAL need not keep it
        self.counters["rebuilt_recorded_continued"] += 1
        self.on_change(trail, STORED)  # observer


def _ignore_change(trail: Trail, removed: int) -> None:
    pass


_HTTP: tuple[int, ...] = (q.TRAIL_HALF_HTTP,)
_ENGINE: tuple[int, ...] = (q.TRAIL_HALF_ENGINE,)
_BOTH: tuple[int, ...] = (q.TRAIL_HALF_HTTP, q.TRAIL_HALF_ENGINE)
_FINALISED_BY_COUNTER = {v.number: f"finalised_by_{v.name[len('FINALISED_BY_'):].lower()}"
                         for v in q.FinalisedBy.DESCRIPTOR.values}
