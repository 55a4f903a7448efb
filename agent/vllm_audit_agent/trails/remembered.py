"""What the trail store remembers of trails that are no longer in it: the next revision of
each recorded trail id (bounded), so a half arriving later gets a new revision instead of
reusing an id; and forced trails, compacted, waiting for their missing half.

A forced trail pushed out of memory before its missing half came is remembered without its
events (bounded by count and bytes): the late half joins it again, so the revision carries
both halves. (Without it the revision held the late half alone and, waiting for the half that
had come long before, was forced again: the newest revision, the one consumers keep, lacked
what the first record had. Seen under 10k requests/s with the HTTP halves lagging the linger;
the store's cap evicts final trails, forced ones among them, first.) The record log's newest
forced trails are remembered the same way at start, so a half arriving after a restart
continues its trail.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

from vllm_audit_agent.model.record import GRAMMAR_PROOF_LEVELS
from vllm_audit_agent.model.trail import Trail

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


class RememberedTrails:
    """`counters`: the store's, where forgotten forced trails are counted
    (`incomplete_forgotten`)."""

    def __init__(self, counters: Counter[str]) -> None:
        self._counters = counters
        self._next_revision: OrderedDict[str, int] = OrderedDict()
        #: Forced trails out of memory, compacted, waiting for their missing half.
        self._incomplete: OrderedDict[str, Trail] = OrderedDict()
        #: What they cost (see `keep`).
        self.incomplete_bytes = 0

    def first_revision(self, trail_id: str) -> int:
        """The revision a trail made anew under this id starts at (0: no earlier record of it
        is remembered); the id is forgotten here, the store has it now."""
        return self._next_revision.pop(trail_id, 0)

    def rejoin(self, trail_id: str) -> Trail | None:
        """The forced trail of this id that left memory, handed back to the store for its late
        half (None: none is remembered)."""
        trail = self._incomplete.pop(trail_id, None)
        if trail is None:
            return None
        self.incomplete_bytes -= trail.nbytes
        trail.nbytes = 0  # the store accounts it again (`_resize`)
        self._next_revision.pop(trail_id, None)
        return trail

    def left(self, trail_id: str, trail: Trail, evicted: bool, store_max_bytes: int) -> None:
        """The trail left the store (`evicted`: pushed out by its caps, else deleted): a half
        arriving later makes its next revision, and a forced one pushed out waits for its
        missing half."""
        self._next_revision[trail_id] = trail.revision + 1
        if len(self._next_revision) > REMEMBERED_REVISIONS:
            self._next_revision.popitem(last=False)
        if evicted and trail.incomplete and not trail.pending_revision:
            # Compacted: its events go unless its record carries them (the grammar proof:
            # its revision must carry them again).
            if not (trail.grammar_backend and trail.audit_level in GRAMMAR_PROOF_LEVELS):
                trail.events, trail.event_bytes = (), 0
            self.keep(trail, store_max_bytes)

    def recorded_before_start(self, trail_id: str, revision: int) -> None:
        """The newest record of a trail not in the store, written before this start, is
        `revision`: a half arriving now makes the next one."""
        self._next_revision[trail_id] = revision + 1
        self._next_revision.move_to_end(trail_id)
        if len(self._next_revision) > REMEMBERED_REVISIONS:
            self._next_revision.popitem(last=False)

    def keep(self, trail: Trail, store_max_bytes: int) -> None:
        """Keeps a forced trail out of memory for its missing half. The oldest remembered go
        first past the bounds, counted (a late half of one then makes a revision without the
        half recorded before)."""
        trail_id = trail.request_id
        trail.nbytes = REMEMBERED_OVERHEAD_BYTES + trail.event_bytes + sum(
            len(raw) for raw in (trail.http_event, trail.grammar_event, trail.so_event)
            if raw is not None)
        previous = self._incomplete.pop(trail_id, None)
        if previous is not None:
            self.incomplete_bytes -= previous.nbytes
        self._incomplete[trail_id] = trail
        self.incomplete_bytes += trail.nbytes
        cap = store_max_bytes * REMEMBERED_INCOMPLETE_SHARE
        while self._incomplete and (len(self._incomplete) > REMEMBERED_INCOMPLETE
                                    or self.incomplete_bytes > cap):
            _, old = self._incomplete.popitem(last=False)
            self.incomplete_bytes -= old.nbytes
            self._counters["incomplete_forgotten"] += 1
