"""Indexes over the trail store so a page of `ListTrails` costs O(page), not O(store).

Every trail gets a sequence number when the index first sees it (arrival order, which is
creation order for the store). The index keeps the sequence numbers sorted overall and per
value of each filtered field (model, user, tenant, state, structured or not), and is kept
current by the store's change callback (`TrailStore.on_change`), called after a batch touched a
trail, after a trail was finalised and when one left the store. A page walks the smallest
candidate list newest first from the cursor (the last sequence number handed out) and checks
the remaining filters on each candidate; the cursor stays valid while trails arrive and are
evicted.

Watchers (`WatchTrails`) are told through a bounded queue of each record a trail gets (its
first: FINAL, a later revision: REVISED) and of its leaving the store (EVICTED by the caps,
DELETED through the management API), so a watcher's view never keeps a trail the store has
dropped; one that falls behind is marked overflowed and its stream ends with a status, never
silently.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.trails.store import STORED, Trail, TrailStore

#: Final trails a watcher may have queued before its stream is ended as too slow.
WATCH_QUEUE = 10_000
#: Distinct key tuples shared between trails before the cache starts afresh.
SHARED_KEYS = 4096

#: A watch event: (WatchEventKind, the trail's summary at that moment).
WatchEvent = tuple[int, q.TrailSummary]

#: (model, user, tenant, state, structured, client_request_id): what a trail is indexed under.
Keys = tuple[str, str, str, int, bool, str]
_FIELDS = ("model", "user", "tenant", "state", "structured", "client_request_id")
#: Per-value seq lists longer than this drop the seqs of trails that left lazily (`_remove`).
LAZY_LIST = 256


@dataclass(frozen=True)
class Filter:
    """What a caller asked for, after the caller's own scope was applied (see query.py)."""

    model: str = ""
    user: str = ""
    tenant: str = ""
    state: int = 0
    structured_only: bool = False
    client_request_id: str = ""
    grammar_backend: str = ""
    finish_reason: str = ""
    since_unix_ms: int = 0
    until_unix_ms: int = 0

    def indexed(self) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        for name, value in (("model", self.model), ("user", self.user),
                            ("tenant", self.tenant), ("state", self.state),
                            ("client_request_id", self.client_request_id)):
            if value:
                out.append((name, value))
        if self.structured_only:
            out.append(("structured", True))
        return out

    def matches(self, s: Filterable) -> bool:
        """Whether a trail (or a summary: the attributes are named alike) matches; checked on
        the Trail, so no summary is built for a candidate that does not."""
        return (
            (not self.model or s.model == self.model)
            and (not self.user or s.user == self.user)
            and (not self.tenant or s.tenant == self.tenant)
            and (not self.state or s.state == self.state)
            and (not self.client_request_id or s.client_request_id == self.client_request_id)
            and (not self.finish_reason or s.finish_reason == self.finish_reason)
            and (not self.since_unix_ms or s.created_unix_ms >= self.since_unix_ms)
            and (not self.until_unix_ms or s.created_unix_ms < self.until_unix_ms)
            and (not self.structured_only or bool(s.grammar_backend))
            and (not self.grammar_backend or s.grammar_backend == self.grammar_backend)
        )


class Filterable(Protocol):
    """What a Filter reads: a Trail or a TrailSummary."""

    @property
    def model(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def state(self) -> int: ...
    @property
    def client_request_id(self) -> str: ...
    @property
    def finish_reason(self) -> str: ...
    @property
    def created_unix_ms(self) -> int: ...
    @property
    def grammar_backend(self) -> str: ...


def _keys(t: Trail) -> Keys:
    return (t.model, t.user, t.tenant, t.state, bool(t.grammar_backend), t.client_request_id)




def record_kind(revision: int) -> int:
    """FINAL for a trail's first record, REVISED for a later one."""
    return q.WATCH_EVENT_KIND_REVISED if revision else q.WATCH_EVENT_KIND_FINAL


class Watch:
    """One `WatchTrails` stream's queue of events (kind, summary snapshot)."""

    def __init__(self, filter: Filter, maxsize: int = WATCH_QUEUE) -> None:
        self.filter = filter
        self.queue: asyncio.Queue[WatchEvent] = asyncio.Queue(maxsize)
        self.overflowed = False

    def wants(self, trail: Trail) -> bool:
        return not self.overflowed and self.filter.matches(trail)

    def offer(self, kind: int, summary: q.TrailSummary) -> None:
        """Queues an event the filter wants (its summary a snapshot built for the watches:
        never changed afterwards, so watches share it)."""
        try:
            self.queue.put_nowait((kind, summary))
        except asyncio.QueueFull:
            self.overflowed = True


class TrailIndex:
    def __init__(self, store: TrailStore, lazy_list: int = LAZY_LIST) -> None:
        self._lazy_list = lazy_list
        self._next_seq = 0
        #: seq -> trail. What the index filed a trail under is kept on the trail itself
        #: (`index_seq`, `index_keys`, `index_final`): no per-trail entry object.
        self._entries: dict[int, Trail] = {}
        #: Every indexed seq, ascending: seqs are handed out in order, so a plain list grown
        #: at its end (sortedcontainers' SortedList's add and remove were ~3 us a trail).
        #: Seqs of trails that left stay until half the list is such (`_all_dead`), then it
        #: is compacted.
        self._all: list[int] = []
        self._all_dead = 0
        #: field -> value -> sorted seqs, plain lists as `_all` (inserts land at or near the
        #: end: recent trails).
        self._by: dict[str, dict[object, list[int]]] = {f: {} for f in _FIELDS}
        self._unpublished = 0
        #: (field, value) -> seqs of trails that left the store still in that value's list.
        self._dead: dict[tuple[str, object], int] = {}
        #: One tuple object per distinct set of keys (most trails share theirs with many
        #: others): ~100 bytes a trail less. Started afresh past SHARED_KEYS.
        self._shared_keys: dict[Keys, Keys] = {}
        self.watches: set[Watch] = set()
        store.on_change = self.on_change
        store.on_removed_many = self.on_removed_many
        for trail in store.trails():  # trails applied before the index existed
            self.on_change(trail, STORED)

    def __len__(self) -> int:
        return len(self._entries)

    def active_count(self) -> int:
        """Trails not yet final, kept current as they change (no scan)."""
        return self._unpublished

    # -- maintenance (called by the store) --------------------------------------------------
    def on_change(self, trail: Trail, removed: int) -> None:
        """`removed`: STORED, or the WatchEventKind (EVICTED, DELETED) of its leaving."""
        seq = trail.index_seq
        if removed != STORED:
            if seq:
                self._tell_record(trail)  # e.g. an active trail finalised as it was evicted
                self._drop(trail)
                if self.watches:
                    self._notify(removed, trail)
            return
        keys = _keys(trail)
        if not seq:
            self._next_seq += 1
            trail.index_seq = seq = self._next_seq
            trail.index_keys, trail.index_final = self._share(keys), trail.published
            self._entries[seq] = trail
            self._all.append(seq)
            for field, value in zip(_FIELDS, keys, strict=True):
                self._insert(field, value, seq)
            if not trail.published:
                self._unpublished += 1
            self._tell_record(trail)
            return
        if keys != trail.index_keys:
            for field, old, new in zip(_FIELDS, trail.index_keys, keys, strict=True):
                if old != new:
                    self._remove(field, old, seq)
                    self._insert(field, new, seq)
            trail.index_keys = self._share(keys)
        if trail.published and not trail.index_final:
            trail.index_final = True
            self._unpublished -= 1
        self._tell_record(trail)

    def _tell_record(self, trail: Trail) -> None:
        """Tells watchers of a record the trail got since they last heard of it (once per
        revision; a trail with a revision owed is told when that revision is written)."""
        if not trail.published or trail.pending_revision or trail.index_told == trail.revision:
            return
        trail.index_told = trail.revision
        if self.watches:
            self._notify(record_kind(trail.revision), trail)

    def on_removed_many(self, trails: list[Trail], how: int) -> None:
        """Many trails left the store at once (clear): one pass over the per-value lists
        instead of a deletion inside each (100k trails of one model: 3 s -> well under 1 s)."""
        gone: set[int] = set()
        for trail in trails:
            seq = trail.index_seq
            if not seq or self._entries.get(seq) is not trail:
                continue
            self._tell_record(trail)
            del self._entries[seq]
            if not trail.index_final:
                self._unpublished -= 1
            trail.index_seq = 0
            gone.add(seq)
            if self.watches:
                self._notify(how, trail)
        if not gone:
            return
        self._all = [s for s in self._all if s in self._entries]
        self._all_dead = 0
        entries = self._entries
        self._dead.clear()  # every list is compacted here
        for values in self._by.values():
            for value in list(values):
                kept = [s for s in values[value] if s in entries]
                if kept:
                    values[value] = kept
                else:
                    del values[value]

    def _share(self, keys: Keys) -> Keys:
        shared = self._shared_keys
        if len(shared) >= SHARED_KEYS:
            shared.clear()
        return shared.setdefault(keys, keys)

    def _drop(self, trail: Trail) -> None:
        seq = trail.index_seq
        del self._entries[seq]
        self._all_dead += 1
        if 2 * self._all_dead >= len(self._all):
            entries = self._entries
            self._all = [s for s in self._all if s in entries]  # a new list: see _tail
            self._all_dead = 0
        for field, value in zip(_FIELDS, trail.index_keys, strict=True):
            self._remove(field, value, seq, left=True)
        if not trail.index_final:
            self._unpublished -= 1
        trail.index_seq = 0

    # An empty value (no user, no tenant, not structured) is never looked up (Filter.indexed
    # skips it), so it is not filed: one list holding most trails would cost memory and a
    # long memmove per removal.
    def _insert(self, field: str, value: object, seq: int) -> None:
        if not value:
            return
        seqs = self._by[field].setdefault(value, [])
        if not seqs or seqs[-1] < seq:
            seqs.append(seq)
        else:
            bisect.insort(seqs, seq)

    def _remove(self, field: str, value: object, seq: int, left: bool = False) -> None:
        """Takes `seq` out of a value's list. A trail that left the store (`left`) is mostly
        among the oldest, so its seq sits near the front of its lists: deleting it there
        moved the whole list (100k seqs for a model or a state) once per eviction and field,
        a tenth of the agent's time with the store at its cap. From a long list it is left
        in place and counted instead (queries skip seqs no longer indexed); the list is
        compacted once half of it is such seqs."""
        if not value:
            return
        values = self._by[field]
        seqs = values[value]
        if left and len(seqs) > self._lazy_list:
            key = (field, value)
            dead = self._dead.get(key, 0) + 1
            if 2 * dead < len(seqs):
                self._dead[key] = dead
                return
            self._dead.pop(key, None)
            entries = self._entries
            seqs[:] = [s for s in seqs if s in entries]
        else:
            del seqs[bisect.bisect_left(seqs, seq)]
        if not seqs:
            del values[value]
            self._dead.pop((field, value), None)

    def _notify(self, kind: int, trail: Trail) -> None:
        summary: q.TrailSummary | None = None
        for watch in self.watches:
            if watch.wants(trail):
                summary = summary or trail.summary  # built once, for the watches that want it
                watch.offer(kind, summary)

    # -- queries -------------------------------------------------------------------------------
    def _smallest(self, f: Filter) -> list[int] | None:
        """The shortest seq list the filter's indexed fields select (every seq when it has
        none); None when one of them matches nothing."""
        lists: list[list[int]] = []
        for field, value in f.indexed():
            seqs = self._by[field].get(value)
            if seqs is None:
                return None
            lists.append(seqs)
        return min(lists, key=len) if lists else self._all

    def page(self, f: Filter, before: int, size: int) -> tuple[list[q.TrailSummary], int]:
        """Up to `size` matching summaries, newest first, older than cursor `before` (0: from
        the newest), and the cursor for the next page (0 when there is none). A listing
        answers "what happened lately" first; the cursor is a seq, so a page stays exact
        while newer trails arrive (they are before the first page) and older ones leave."""
        out: list[q.TrailSummary] = []
        entries = self._entries
        last = 0
        seqs = self._smallest(f)
        for seq in _older(seqs, before) if seqs is not None else ():
            trail = entries.get(seq)
            if trail is None:  # a seq of a trail that left, still in a long list (`_remove`)
                continue
            if not f.matches(trail):
                continue
            if len(out) == size:
                return out, last  # one more exists: the next page starts before `last`
            out.append(trail.summary)
            last = seq
        return out, 0

    def final(self, f: Filter) -> Iterator[q.TrailSummary]:
        """Matching final trails, oldest first (a watch's replay, then what comes next)."""
        seqs = self._smallest(f)
        for seq in _tail(seqs, 0) if seqs is not None else ():
            trail = self._entries.get(seq)
            if trail is not None and trail.index_final and f.matches(trail):
                yield trail.summary

    def watch(self, f: Filter, maxsize: int = WATCH_QUEUE) -> Watch:
        w = Watch(f, maxsize)
        self.watches.add(w)
        return w

    def unwatch(self, w: Watch) -> None:
        self.watches.discard(w)


def _tail(seqs: list[int], after: int) -> Iterator[int]:
    # Iterates by index over a list the store may change between pages (never during one:
    # a page is built without awaiting).
    for i in range(bisect.bisect_right(seqs, after), len(seqs)):
        yield seqs[i]


def _older(seqs: list[int], before: int) -> Iterator[int]:
    # By index, newest first, like _tail: the list is never changed during one page.
    start = bisect.bisect_left(seqs, before) if before else len(seqs)
    for i in range(start - 1, -1, -1):
        yield seqs[i]
