"""Encoding allowed-token rows into the smallest `AllowedTokenSet` form (numpy), under caps.

Runs on the sender thread (raw_events.py converts whole batches there), never on vLLM's
engine thread: the engine thread only copies the row out of vLLM's reused bitmask array.

Per row the exact serialised size of each form is compared and the smallest kept (ties:
allowed ids, disallowed ids, runs, raw row). Work is word-level: a form is expanded into ids
only when its lower bound (one byte per id or run) can still beat the best size so far, so a
dense random row costs a popcount and an edge count, and a sparse one costs in proportion to
its ids — never a 128k-element bit expansion. Rows repeat (every request inside a JSON
string has the same row; grammars revisit states), so results are cached by the row's bytes.

Caps (`AllowedSetRecorder`): a set whose encoding alone is over the per-step cap, or that
would take its request's sets past the per-trail cap, is dropped: the step is marked
`allowed_set_truncated` and the drop counted by reason in the request's summary, never
silently. Decoding is `vllm_audit.allowed_sets.decode` (pure Python, shared with the agent,
replay and the tests).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt

from vllm_audit import allowed_sets as sets

U32 = npt.NDArray[np.uint32]
Ids = npt.NDArray[np.int64]
#: (encoding, payload, serialised size); the payload is a list of ints (deltas or run
#: lengths) or, for the raw row, bytes.
Encoded = tuple[str, Any, int]

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


def _varint_bytes(values: Ids) -> int:
    """Bytes of `values` (non-negative, < 2^35) as protobuf varints."""
    n = values.size
    for bits in (7, 14, 21, 28):
        n += int(np.count_nonzero(values >= 1 << bits))
    return n


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


def _rank(choice: tuple[str, int]) -> tuple[int, int]:
    return choice[1], sets.ENCODINGS.index(choice[0])


def encode(words: U32, vocab_size: int) -> Encoded:
    """The smallest form of one row given as `row_words` returns it."""
    best = (sets.BITMASK, sets.wire_size(sets.BITMASK, words.size * 4))
    count = int(np.bitwise_count(words).sum())
    payloads: dict[str, Ids] = {}

    def consider(encoding: str, values: Ids) -> tuple[str, int]:
        payloads[encoding] = values
        return min(best, (encoding, sets.wire_size(encoding, _varint_bytes(values))), key=_rank)

    # Each id or run costs at least one byte: a form whose lower bound loses is not expanded.
    if sets.wire_size(sets.ALLOWED_IDS, count) <= best[1]:
        best = consider(sets.ALLOWED_IDS, np.diff(_set_bits(words), prepend=0))
    if sets.wire_size(sets.DISALLOWED_IDS, vocab_size - count) <= best[1]:
        best = consider(sets.DISALLOWED_IDS,
                        np.diff(_set_bits(row_words(~words, vocab_size)), prepend=0))
    # A non-empty set has at least two runs (the leading disallowed one may be 0).
    if sets.wire_size(sets.RUNS, 2 if count else 0) <= best[1]:
        # Bit i of `edges` is set where token i differs from token i-1 (token -1 counts as
        # disallowed): a row of few ranges has few edges whatever its density.
        carry = np.zeros_like(words)
        carry[1:] = words[:-1] >> np.uint32(31)
        edges = words ^ ((words << np.uint32(1)) | carry)
        if sets.wire_size(sets.RUNS, int(np.bitwise_count(edges).sum())) <= best[1]:
            bounds = _set_bits(edges)  # bits past vocab_size are clear: no edge after it
            if bounds.size % 2:  # the last allowed run reaches the end of the vocabulary
                bounds = np.append(bounds, vocab_size)
            best = consider(sets.RUNS, np.diff(bounds, prepend=0))
    encoding, size = best
    if encoding == sets.BITMASK:
        return encoding, words.astype("<u4", copy=False).tobytes(), size
    return encoding, payloads[encoding].tolist(), size


def to_message(encoded: Encoded, out: Any) -> None:
    """Fills `out` (an AllowedTokenSet) with an `encode` result."""
    encoding, payload, _ = encoded
    if encoding == sets.BITMASK:
        out.bitmask = payload
        return
    member = getattr(out, encoding)
    member.SetInParent()  # an empty list is a set too (nothing allowed / all allowed)
    (member.lengths if encoding == sets.RUNS else member.deltas).extend(payload)


class AllowedSetRecorder:
    """Sender-thread state: the row cache and each request's set bytes and drops."""

    def __init__(self, step_max_bytes: int, trail_max_bytes: int) -> None:
        self.step_max_bytes = step_max_bytes
        self.trail_max_bytes = trail_max_bytes
        self._cache: OrderedDict[tuple[int, bytes], Encoded] = OrderedDict()
        #: request id -> [set bytes kept, dropped over the step cap, over the trail cap]
        self._requests: OrderedDict[str, list[int]] = OrderedDict()
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
        """Sets `step.allowed_set` (a StructuredOutputStep) from the raw row, or marks the
        step allowed_set_truncated and counts the drop."""
        tally = self._requests.get(request_id)
        if tally is None:
            tally = self._requests[request_id] = [0, 0, 0]
            if len(self._requests) > MAX_TRACKED_REQUESTS:
                self._requests.popitem(last=False)
        encoded = self.encoded(row, vocab_size)
        size = encoded[2]
        if size > self.step_max_bytes:
            tally[1] += 1
            step.allowed_set_truncated = True
        elif tally[0] + size > self.trail_max_bytes:
            tally[2] += 1
            step.allowed_set_truncated = True
        else:
            tally[0] += size
            to_message(encoded, step.allowed_set)

    def finish(self, summary: Any, request_id: str) -> None:
        """Writes the request's set bytes and drops into its StructuredOutputSummary."""
        tally = self._requests.pop(request_id, None)
        if tally is not None:
            summary.allowed_set_bytes = tally[0]
            summary.allowed_sets_over_step_cap = tally[1]
            summary.allowed_sets_over_trail_cap = tally[2]
