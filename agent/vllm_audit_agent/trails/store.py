"""Per-request trails: assembled from engine and HTTP events, bounded, recorded once per
revision.

Identity. A served request's trail id is the id the hook's middleware gave vLLM (unique per
request, never the client's X-Request-Id, which is kept as `client_request_id`); engine
events join it by vLLM's id prefix (correlate.py). Offline requests use vLLM's own id.

A trail is recorded once complete, or forced once its linger passed or when it is pushed out
of memory (completeness.py says when and what its record says); events arriving after its
record make a revision. A trail that left memory is remembered without its events
(remembered.py), so its next half continues it. At shutdown nothing is forced: open trails
stay in the WAL and are finished after the restart (a made-up record would share its id with
the real one that follows).

Each trail notes the WAL segments holding its events until its record is written (see
`delivered`), so the WAL keeps exactly what a restart would need.

Memory is bounded by count and by bytes: at most `max_trails` trails and about `max_bytes`
bytes of them (oldest final trails evicted first, then oldest active ones, each counted by
reason), and at most `max_events` events per trail (counted). A trail is a slotted plain
object with its events serialised and its TrailSummary built only when asked for (trail.py
says why). A trail's size is its serialised events plus a fixed per-object overhead; the
total is kept as a running sum (`bytes`), so the cap is checked in O(1) per batch.

Linger: open trails with one half complete wait in a queue in start order (linger.py), so a
sweep costs the trails that are due; the agent's sweeper takes them in slices
(`sweep(limit=...)`). Eviction takes the oldest final trail from an index of final trails in
O(1) (searching the store for it walked past every active trail per eviction: quadratic once
the store sat at its cap with tens of thousands of trails waiting for a lagging half).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from sys import intern

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.model.trail import Trail, from_record
from vllm_audit_agent.model.validation import Classified, classify
from vllm_audit_agent.trails.completeness import (
    FINALISED_BY_COUNTER,
    missing_halves,
    settle,
    state_name,
)
from vllm_audit_agent.trails.correlate import trail_id_for_engine_request
from vllm_audit_agent.trails.linger import LingerQueue
from vllm_audit_agent.trails.remembered import RememberedTrails
from vllm_audit_agent.trails.trail_events import EVENT_OVERHEAD_BYTES, add_events, by_request, trail_size

__all__ = ["Trail", "TrailStore"]

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
        #: Ids of the final trails (recorded, nothing pending), oldest first: what eviction
        #: takes first, found in O(1).
        self._final: OrderedDict[str, None] = OrderedDict()
        #: Open trails one of whose halves is complete, in the order their linger started.
        self._lingering = LingerQueue()
        #: Tuples many trails hold alike (source ids, segments), one object each.
        self._tuples: dict[tuple[object, ...], tuple[object, ...]] = {}
        self.counters: Counter[str] = Counter()
        #: Trails that left the store: their next revisions, forced ones awaiting a half.
        self._remembered = RememberedTrails(self.counters)
        self.finished_by_state: Counter[str] = Counter()
        #: Undelivered trails per WAL segment: a segment is reclaimable at zero.
        self.segment_refs: Counter[int] = Counter()
        # -- observer (the query index, index.py) --
        #: Called with (trail, STORED) after a batch touched a trail or it was finalised,
        #: and (trail, EVICTED or DELETED) when it left the store.
        self.on_change: Callable[[Trail, int], None] = _ignore_change
        #: Called once with every trail `clear` removed (after they left the store), so the
        #: observer can drop them in one pass; None: `on_change` per trail.
        self.on_removed_many: Callable[[list[Trail], int], None] | None = None
        for name in ("deleted", "incomplete_rejoined", "incomplete_forgotten",
                     "rebuilt_recorded_continued", "rebuilt_recorded_fragment_dropped"):
            self.counters[name] += 0

    @property
    def incomplete_bytes(self) -> int:
        """What the forced trails remembered out of memory cost (remembered.py)."""
        return self._remembered.incomplete_bytes

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
        groups = by_request(classified)
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
                # the ignore[assignment] below: _shared interns it (element type lost)
                trail.segments = self._shared((*trail.segments, segment))  # type: ignore[assignment]
                self.segment_refs[segment] += 1
            if source_id and source_id not in trail.source_ids:
                # the ignore[assignment] below: _shared interns it (element type lost)
                trail.source_ids = self._shared((*trail.source_ids, source_id))  # type: ignore[assignment]
            if not trail.model and model:
                trail.model = intern(model)
            add_events(trail, events, max_events, counters)
            touched.append(trail)
        for trail in touched:
            self._resize(trail)
            if trail.half_complete_at is None and (trail.has_http or trail.engine_done()):
                trail.half_complete_at = now
        for trail in touched:
            self._maybe_finalise(trail)
            if (not trail.lingering and trail.half_complete_at is not None
                    and (not trail.published or trail.pending_revision)):
                self._lingering.start(trail, trail.half_complete_at)
        on_change = self.on_change
        for trail in touched:
            on_change(trail, STORED)  # observer
        self._evict()

    def _resize(self, trail: Trail) -> None:
        size = trail_size(trail, self.max_events)
        self.bytes += size - trail.nbytes
        trail.nbytes = size

    def _trail(self, trail_id: str, expects_http: bool, time_unix_nano: int) -> Trail:
        created = time_unix_nano // 1_000_000
        trail = self._trails.get(trail_id)
        if trail is None:
            # The rest of a forced trail that left memory: the revision carries both halves.
            trail = self._remembered.rejoin(trail_id)
            if trail is not None:
                self._trails[trail_id] = trail
                self.counters["incomplete_rejoined"] += 1
        if trail is None:
            revision = self._remembered.first_revision(trail_id)
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
    def _maybe_finalise(self, trail: Trail, forced_by: int = q.FINALISED_BY_UNSPECIFIED) -> None:
        """Writes the trail's record (or its next revision) when it is complete, or when
        `forced_by` says why it must be written without a half."""
        if trail.published and not trail.pending_revision:
            return
        missing = missing_halves(trail)
        if missing and forced_by == q.FINALISED_BY_UNSPECIFIED:
            return
        revision = settle(trail, missing, forced_by)
        if revision:
            self.counters["revisions"] += 1
        # A final trail shares its token counts' tuple ((48,) for much of one workload) with
        # others.
        # the ignore[assignment] below: _shared interns it (element type lost)
        trail.engine_output_tokens = self._shared(trail.engine_output_tokens)  # type: ignore[assignment]
        self._final[trail.request_id] = None
        self._final.move_to_end(trail.request_id)
        if not revision:
            self.finished_by_state[state_name(trail.state)] += 1
        if trail.finalised_by != q.FINALISED_BY_COMPLETE:
            self.counters[FINALISED_BY_COUNTER[trail.finalised_by]] += 1
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
        queue, linger = self._lingering, self.linger_seconds
        written = 0
        while queue.is_due(now, linger):
            if limit is not None and written >= limit:
                return True
            trail = queue.pop()
            if trail is None or self._trails.get(trail.request_id) is not trail:
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
        self._remembered.left(trail_id, trail, how == EVICTED, self.max_bytes)
        return trail

    # -- trails recorded before this start ------------------------------------------------
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
            self._remembered.recorded_before_start(trail_id, revision)
            if forced is not None:
                trail = from_record(forced)
                trail.event_bytes = sum(len(raw) + EVENT_OVERHEAD_BYTES for raw in trail.events)
                self._remembered.keep(trail, self.max_bytes)

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
