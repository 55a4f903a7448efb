"""Encoding allowed-token rows into the smallest `AllowedTokenSet` form (numpy), under caps.

Runs on the sender thread (raw_events.py converts whole batches there), never on vLLM's
engine thread: the engine thread only copies the row out of vLLM's reused bitmask array.

Per row the exact serialised size of each form is compared and the smallest kept (ties:
allowed ids, disallowed ids, runs, raw row). Work is word-level: a form is expanded into ids
only when its lower bound (one byte per id or run) can still beat the best size so far, so a
dense random row costs a popcount and an edge count, and a sparse one costs in proportion to
its ids — never a 128k-element bit expansion. Rows repeat (every request inside a JSON
string has the same row; grammars revisit states), so results are cached by the row's bytes.

Per request (`AllowedSetRecorder`): a set the request already recorded in full at an earlier
step is recorded as `same_as_step` (2-3 bytes; a grammar has few states, so most steps are
repeats). A set whose encoding alone is over the per-step cap, or that would take its
request's sets past the per-trail cap, or whose row the engine thread did not copy (a backlog
of rows waiting here), is dropped: the step is marked
`allowed_set_truncated` and the drop counted by reason in the request's summary, never
silently. Decoding is `vllm_audit.allowed_sets.decode` (pure Python, shared with the agent,
replay and the tests).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt

from vllm_audit import allowed_sets as sets

U32 = npt.NDArray[np.uint32]
Ids = npt.NDArray[np.int64]
#: (encoding, the serialised AllowedTokenSet): its length is the size the forms were
#: compared on, and the message is rebuilt from it with one C-level parse.
Encoded = tuple[str, bytes]

#: Distinct rows whose encoding is kept for reuse (keys are the rows: ~16 KiB each at a 128k
#: vocabulary, so ~1 MiB at most).
CACHE_ROWS = 64
#: Requests whose set bytes are tracked at once. A request's entry leaves with its summary;
#: past this (summaries lost to a full buffer) the oldest entry goes and that request's
#: trail cap starts over.
MAX_TRACKED_REQUESTS = 65536


def _set_bits(words: U32) -> Ids:
    """Positions of the set bits of a row of uint32 words, ascending. Peels the lowest set
    bit of every non-zero word per pass, so it costs in proportion to the set bits, and the
    passes are as many as the densest word has bits."""
    nonzero = np.flatnonzero(words)
    values = words[nonzero].astype(np.int64)
    base = nonzero.astype(np.int64) * 32
    found: list[Ids] = []
    while values.size:
        lowest = values & -values
        found.append(base + np.bitwise_count(lowest - 1))
        values &= values - 1
        keep = values != 0
        values, base = values[keep], base[keep]
    if not found:
        return np.empty(0, dtype=np.int64)
    out = np.concatenate(found)
    out.sort()
    return out


def _varints(values: Ids) -> bytes:
    """`values` (non-negative, < 2^32) as packed protobuf varints, written by numpy one byte
    position at a time (no per-value Python work). Deltas and run lengths are mostly under
    128, one byte each: that case is a single cast."""
    if not values.size:
        return b""
    v = values.astype(np.uint32)
    groups = max(1, (int(v.max()).bit_length() + 6) // 7)
    if groups == 1:
        return v.astype(np.uint8).tobytes()
    lengths = np.ones(v.size, dtype=np.int64)
    for k in range(1, groups):
        lengths += v >= 1 << (7 * k)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    for k in range(groups):
        present = lengths > k
        byte = (v >> np.uint32(7 * k)) & np.uint32(0x7F)
        byte |= (lengths > k + 1).astype(np.uint32) << np.uint32(7)  # more bytes follow
        out[starts[present] + k] = byte[present]
    return out.tobytes()


def row_words(row: npt.NDArray[Any], vocab_size: int) -> U32:
    """One bitmask row (int32 words as vLLM fills them, or their bytes) as a fresh uint32 array
    of ceil(vocab_size/32) words with the bits past vocab_size cleared (a row reset to "allow
    all" is -1 in every word)."""
    n_words = (vocab_size + 31) // 32
    words: U32 = np.zeros(n_words, dtype=np.uint32)
    src = row.view("<u4")[:n_words]
    words[: src.size] = src
    tail = vocab_size % 32
    if tail:
        words[-1] &= np.uint32((1 << tail) - 1)
    return words


def _deltas(ids: Ids) -> Ids:
    """Each value minus the one before it (the first minus 0); np.diff(prepend=0) does the
    same through a slower generic path."""
    out = ids.copy()
    out[1:] -= ids[:-1]
    return out


def _expand(encoding: str, words: U32, vocab_size: int) -> Ids:
    """The values a form lists: id deltas, or run lengths."""
    if encoding == sets.ALLOWED_IDS:
        return _deltas(_set_bits(words))
    if encoding == sets.DISALLOWED_IDS:
        return _deltas(_set_bits(row_words(~words, vocab_size)))
    bounds = _set_bits(_edges(words))  # bits past vocab_size are clear: no edge after it
    if bounds.size % 2:  # the last allowed run reaches the end of the vocabulary
        bounds = np.append(bounds, vocab_size)
    return _deltas(bounds)


def _edges(words: U32) -> U32:
    """Bit i is set where token i differs from token i-1 (token -1 counts as disallowed): a
    row of few ranges has few edges whatever its density."""
    carry = np.zeros_like(words)
    carry[1:] = words[:-1] >> np.uint32(31)
    edges: U32 = words ^ ((words << np.uint32(1)) | carry)
    return edges


def encode(words: U32, vocab_size: int) -> Encoded:
    """The smallest form of one row given as `row_words` returns it (ties: the earlier form
    of `vllm_audit.allowed_sets.ENCODINGS`). Each id or run costs at least one byte, so each
    form has a lower bound known from popcounts alone; forms are expanded from the lowest
    bound up, and not at all once the bound cannot beat the best so far."""
    order = sets.ENCODINGS.index
    count = int(np.bitwise_count(words).sum())
    n_edges = int(np.bitwise_count(_edges(words)).sum())
    bounds = sorted(
        ((sets.wire_size(encoding, n), order(encoding), encoding) for encoding, n in (
            (sets.ALLOWED_IDS, count), (sets.DISALLOWED_IDS, vocab_size - count),
            (sets.RUNS, n_edges))))
    best = (sets.wire_size(sets.BITMASK, words.size * 4), order(sets.BITMASK), b"")
    best_encoding = sets.BITMASK
    for bound, rank, encoding in bounds:
        if (bound, rank) > best[:2]:
            break
        payload = _varints(_expand(encoding, words, vocab_size))
        candidate = (sets.wire_size(encoding, len(payload)), rank, payload)
        if candidate[:2] < best[:2]:
            best, best_encoding = candidate, encoding
    if best_encoding == sets.BITMASK:
        return best_encoding, sets.frame(sets.BITMASK, words.astype("<u4", copy=False).tobytes())
    return best_encoding, sets.frame(best_encoding, best[2])


class _RequestSets:
    """One request's set bytes, drops and the sets it has recorded in full."""

    __slots__ = ("kept_bytes", "over_backlog", "over_step_cap", "over_trail_cap", "seen")

    def __init__(self) -> None:
        self.kept_bytes = 0
        self.over_step_cap = 0
        self.over_trail_cap = 0
        self.over_backlog = 0
        #: digest of a serialised set -> the step that holds it in full
        self.seen: dict[bytes, int] = {}


class AllowedSetRecorder:
    """Sender-thread state: the row cache and each request's set bytes, drops and the sets it
    recorded in full (a repeat becomes `same_as_step`)."""

    def __init__(self, step_max_bytes: int, trail_max_bytes: int) -> None:
        self.step_max_bytes = step_max_bytes
        self.trail_max_bytes = trail_max_bytes
        self._cache: OrderedDict[tuple[int, bytes], Encoded] = OrderedDict()
        self._requests: OrderedDict[str, _RequestSets] = OrderedDict()
        self.cache_hits = 0

    def encoded(self, row: bytes, vocab_size: int) -> Encoded:
        key = (vocab_size, row)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return hit
        result = encode(row_words(np.frombuffer(row, dtype="<u4"), vocab_size), vocab_size)
        self._cache[key] = result
        if len(self._cache) > CACHE_ROWS:
            self._cache.popitem(last=False)
        return result

    def record(self, step: Any, request_id: str, row: bytes, vocab_size: int) -> None:
        """Sets `step.allowed_set` (a StructuredOutputStep whose `step` is set) from the raw
        row — a reference when the request recorded the same set in full before — or marks
        the step allowed_set_truncated and counts the drop. An empty `row` is one the engine
        thread did not copy (raw_events.ROW_OVER_BACKLOG)."""
        sets_of = self._requests.get(request_id)
        if sets_of is None:
            sets_of = self._requests[request_id] = _RequestSets()
            if len(self._requests) > MAX_TRACKED_REQUESTS:
                self._requests.popitem(last=False)
        if not row:
            sets_of.over_backlog += 1
            step.allowed_set_truncated = True
            return
        data = self.encoded(row, vocab_size)[1]
        # The serialised form is canonical (one per set and vocabulary): its digest names it.
        digest = hashlib.blake2b(data, digest_size=16).digest()
        earlier = sets_of.seen.get(digest)
        size = len(data)
        if earlier is not None and sets.reference_size(earlier) < size:
            size = sets.reference_size(earlier)
            data = b""
        if size > self.step_max_bytes:
            sets_of.over_step_cap += 1
            step.allowed_set_truncated = True
        elif sets_of.kept_bytes + size > self.trail_max_bytes:
            sets_of.over_trail_cap += 1
            step.allowed_set_truncated = True
        else:
            sets_of.kept_bytes += size
            if data:
                step.allowed_set.ParseFromString(data)
                if earlier is None:
                    sets_of.seen[digest] = step.step
            else:
                step.allowed_set.same_as_step = earlier

    def finish(self, summary: Any, request_id: str) -> None:
        """Writes the request's set bytes and drops into its StructuredOutputSummary."""
        sets_of = self._requests.pop(request_id, None)
        if sets_of is not None:
            summary.allowed_set_bytes = sets_of.kept_bytes
            summary.allowed_sets_over_step_cap = sets_of.over_step_cap
            summary.allowed_sets_over_trail_cap = sets_of.over_trail_cap
            summary.allowed_sets_over_backlog = sets_of.over_backlog
