"""The linger queue: open trails one of whose halves is complete, in the order their linger
started, so that a sweep costs the trails that are due, not a walk over the whole store.

An entry whose trail moved on since (its linger started again, or it was recorded) is
skipped when it comes up. The agent's sweeper takes the due trails in slices and lets its
loop serve ingest in between (tens of thousands due at once held the loop for seconds, past
the hooks' ack deadline).
"""

from __future__ import annotations

from collections import deque

from vllm_audit_agent.model.trail import Trail


class LingerQueue:
    def __init__(self) -> None:
        # When each linger started, and its trail. Two deques, not one of pairs: a pair per
        # trail would be one more object for the garbage collector to walk.
        self._started: deque[float] = deque()
        self._trails: deque[Trail] = deque()

    def start(self, trail: Trail, started: float) -> None:
        """The trail's linger started at `started` (its `half_complete_at`)."""
        trail.lingering = True
        self._started.append(started)
        self._trails.append(trail)

    def is_due(self, now: float, linger_seconds: float) -> bool:
        """Whether the oldest entry's linger of `linger_seconds` has passed by `now`."""
        return bool(self._trails) and now - self._started[0] >= linger_seconds

    def pop(self) -> Trail | None:
        """Takes the oldest entry: its trail, or None when its linger started again since or
        it is not lingering any more."""
        started, trail = self._started.popleft(), self._trails.popleft()
        if not trail.lingering or trail.half_complete_at != started:
            return None
        return trail
