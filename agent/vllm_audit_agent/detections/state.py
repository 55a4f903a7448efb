"""The rules' bounded state: a least-recently-seen map of keys (evictions counted), sliding
windows of weighted events, the distinct values seen in a window, and a robust baseline
(median and MAD over a ring of recent values)."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
#: 1.4826 x MAD estimates the standard deviation of a normal distribution.
MAD_SCALE = 1.4826


class Lru(Generic[K, V]):
    """At most `max_keys` values; the least recently used goes first, and `evicted` counts."""

    def __init__(self, max_keys: int, make: Callable[[], V]) -> None:
        self.max_keys = max_keys
        self.make = make
        self.evicted = 0
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V:
        items = self._items
        value = items.get(key)
        if value is None:
            value = items[key] = self.make()
            if len(items) > self.max_keys:
                items.popitem(last=False)
                self.evicted += 1
        else:
            items.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self.max_keys:
            self._items.popitem(last=False)
            self.evicted += 1

    def __len__(self) -> int:
        return len(self._items)


class Window:
    """Weighted events of one key within `span_ms` of its newest, oldest first (at most `cap`
    entries: past that the count only needs to say "over the threshold")."""

    __slots__ = ("_entries", "cap", "newest_ms", "span_ms", "total")

    def __init__(self, span_ms: int, cap: int) -> None:
        self.span_ms, self.cap = span_ms, cap
        self._entries: deque[tuple[int, str, int]] = deque()
        self.total = 0
        self.newest_ms = 0

    def add(self, time_ms: int, ref: str, weight: int = 1) -> None:
        entries = self._entries
        entries.append((time_ms, ref, weight))
        self.total += weight
        # Records come in finishing order, not quite in arrival order: the newest seen bounds.
        self.newest_ms = max(self.newest_ms, time_ms)
        horizon = self.newest_ms - self.span_ms
        while entries and (entries[0][0] < horizon or len(entries) > self.cap):
            self.total -= entries.popleft()[2]

    @property
    def start_ms(self) -> int:
        return self._entries[0][0] if self._entries else 0

    def refs(self) -> tuple[str, ...]:
        return tuple(ref for _, ref, _ in self._entries)


class Distinct:
    """The distinct values of one key seen within `span_ms` (most recent last; at most `cap`)."""

    __slots__ = ("_seen", "cap", "span_ms")

    def __init__(self, span_ms: int, cap: int) -> None:
        self.span_ms, self.cap = span_ms, cap
        self._seen: OrderedDict[str, tuple[int, str]] = OrderedDict()

    def add(self, value: str, time_ms: int, ref: str) -> None:
        seen = self._seen
        seen[value] = (time_ms, ref)
        seen.move_to_end(value)
        horizon = time_ms - self.span_ms
        while seen and (next(iter(seen.values()))[0] < horizon or len(seen) > self.cap):
            seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def start_ms(self) -> int:
        return min((t for t, _ in self._seen.values()), default=0)

    def refs(self) -> tuple[str, ...]:
        return tuple(ref for _, ref in self._seen.values())


class Buckets:
    """A count within `span_ms` of the newest, in BUCKETS buckets: bounded whatever the rate
    (a window of every request would hold each one)."""

    __slots__ = ("_counts", "total", "width_ms")
    BUCKETS = 30

    def __init__(self, span_ms: int) -> None:
        self.width_ms = max(1, span_ms // self.BUCKETS)
        self._counts: deque[list[int]] = deque()
        self.total = 0

    def add(self, time_ms: int, weight: int = 1) -> None:
        bucket = time_ms // self.width_ms
        counts = self._counts
        if counts and counts[-1][0] >= bucket:
            counts[-1][1] += weight  # this bucket (or a late event: counted in the newest)
        else:
            counts.append([bucket, weight])
        self.total += weight
        while counts[0][0] < counts[-1][0] - self.BUCKETS:
            self.total -= counts.popleft()[1]


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class RobustBaseline:
    """The last `history` values of one key; `bound()` is the value above which one is
    anomalous (None while fewer than `warmup` are known). Median and MAD are recomputed every
    REFRESH values (an eighth of the history once it is longer), not on each: a sort of 200
    values per request was most of the rule's cost."""

    __slots__ = ("_bound", "_since", "_values", "min_ratio", "min_spread", "min_value",
                 "spread_factor", "warmup")
    REFRESH = 8

    def __init__(self, history: int, warmup: int, spread_factor: float, min_ratio: float,
                 min_spread: float, min_value: float) -> None:
        self._values: deque[float] = deque(maxlen=history)
        self.warmup, self.spread_factor, self.min_ratio = warmup, spread_factor, min_ratio
        self.min_spread, self.min_value = min_spread, min_value
        self._bound: float | None = None
        self._since = 0

    def add(self, value: float) -> None:
        self._values.append(value)
        self._since += 1
        if self._bound is None or self._since >= max(self.REFRESH, len(self._values) >> 3):
            self._bound = self._compute()
            self._since = 0

    def _compute(self) -> float | None:
        if len(self._values) < self.warmup:
            return None
        ordered = sorted(self._values)
        median = _median(ordered)
        mad = _median(sorted(abs(v - median) for v in ordered))
        spread = max(MAD_SCALE * mad, self.min_spread)
        return max(median + self.spread_factor * spread, self.min_ratio * median, self.min_value)

    def bound(self) -> float | None:
        return self._bound

    def median(self) -> float:
        return _median(sorted(self._values)) if self._values else 0.0
