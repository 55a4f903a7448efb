"""What the record log remembers, from its replay at start, of the records written before this
start, until the agent has used it: the event ids of the records the ingest WAL's replay could
meet (so that it does not record again a trail already in the log) and the newest revision of
the newest trails (so that a half arriving after a restart continues its trail: the next
revision, with the half recorded before). Bounded by how far back the ingest WAL reaches, and
freed once handed over."""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

import orjson

#: Trails whose newest record is remembered at start (its revision, and its bytes when it was
#: forced), so that a half arriving after a restart continues the trail: the next revision,
#: with the half recorded before. At most this many, and at most REMEMBERED_FORCED_BYTES of
#: forced records (a record at level full carries its grammar steps). Freed once handed to
#: the trail store.
REMEMBERED_TRAILS = 100_000
#: Event ids kept when the start is not told how far back the ingest WAL reaches (a log
#: opened on its own, or an ingest WAL whose first batches give no time): the newest this many.
UNBOUNDED_EVENT_IDS = 1_000_000
REMEMBERED_FORCED_BYTES = 64 << 20


class RecordedBefore:
    def __init__(self, since_ms: int | None = None) -> None:
        """`since_ms`: how far back the ingest WAL's replay reaches (footers.RECALL_MIN_RECORDS):
        the event ids of records stamped at or after it are kept, all of them (dropping one
        would record its trail twice); None (not known) keeps the newest UNBOUNDED_EVENT_IDS."""
        self.since_ms = since_ms
        #: Event ids of the request records read back, so that replaying the ingest WAL does
        #: not record again a trail already in the log. Freed once replay is over.
        self._event_ids: deque[str] = deque(maxlen=UNBOUNDED_EVENT_IDS if since_ms is None
                                            else None)
        #: trail id -> (newest revision recorded, that record's bytes if it was forced).
        self.trails: OrderedDict[str, tuple[int, bytes | None]] = OrderedDict()
        self._forced_bytes = 0

    def note(self, record: dict[str, Any], payload: bytes) -> None:
        """A request record (one with an `event_id`) read back at start, as `payload`."""
        if self.since_ms is None or int(record.get("recorded_unix_ms", 0)) >= self.since_ms:
            self._event_ids.append(str(record["event_id"]))
        self._remember_trail(record, payload)

    def take_event_ids(self) -> set[str]:
        """The event ids noted, handed over once."""
        ids, self._event_ids = self._event_ids, deque(maxlen=self._event_ids.maxlen)
        return set(ids)

    def _remember_trail(self, record: dict[str, Any], payload: bytes) -> None:
        trail = str(record.get("trail_id") or "")
        if not trail:
            return
        revision = int(record.get("revision") or 0)
        known = self.trails.get(trail)
        if known is not None and known[0] > revision:
            return
        forced = record.get("finalised_by", "FINALISED_BY_COMPLETE") != "FINALISED_BY_COMPLETE"
        kept = payload if forced else None
        if known is not None and known[1] is not None:
            self._forced_bytes -= len(known[1])
        self.trails[trail] = (revision, kept)
        self.trails.move_to_end(trail)
        if kept is not None:
            self._forced_bytes += len(kept)
        while self.trails and (len(self.trails) > REMEMBERED_TRAILS
                               or self._forced_bytes > REMEMBERED_FORCED_BYTES):
            _, (_, old) = self.trails.popitem(last=False)
            if old is not None:
                self._forced_bytes -= len(old)

    def newest(self, trail_id: str) -> tuple[int, bool] | None:
        """The newest revision recorded for a trail and whether that record was forced
        (None: not among the newest trails)."""
        known = self.trails.get(trail_id)
        return None if known is None else (known[0], known[1] is not None)

    def take_trails(self) -> list[tuple[str, int, dict[str, Any] | None]]:
        """The newest trails, oldest first: (trail id, newest revision, that record when it
        was forced). Handed over once."""
        out = [(trail, revision, orjson.loads(forced) if forced is not None else None)
               for trail, (revision, forced) in self.trails.items()]
        self.trails = OrderedDict()
        self._forced_bytes = 0
        return out
