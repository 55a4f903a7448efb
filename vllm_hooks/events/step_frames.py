"""Sender-thread half of the columnar step capture: engine steps' rows and accepted steps
into `StructuredOutputSteps` events (the columns the agent expands into per-step events).

The engine thread (vllm/grammar_tap.py) hands over, per engine step, a ROWS event (the
request ids in row order, a copy of the bitmask or the counts it made, speculative rows) and,
when sealed, a STEPS event (four slots per request step, `records`). Here, in buffer order:
- ROWS: the rows are popcounted (one vectorised count per engine step) and each request's
  rows remembered until its next step takes them, as the per-step proxy once took its
  pending rows: token k of a step is sampled from row first + k;
- STEPS: each step gets its allowed counts, the request's allowed min/max/mean are
  accumulated (its summary's, filled in here), and the steps the level keeps are appended as
  columns, cut into messages of at most `chunk_bytes`. At level key-events a step that is
  neither the first nor rejected is held; the request's last one goes out before its summary.
  At full-with-allowed-sets each kept step's row (a view of the copy, no per-row copy made
  by the engine thread) is encoded by the AllowedSetRecorder, exactly as for per-step events.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from vllm_audit.v1 import events_pb2 as pb
from vllm_hooks.config.levels import Level
from vllm_hooks.events.allowed_counts import allowed_counts, new_scratch, scratch_shape
from vllm_hooks.events.allowed_set_encoder import MAX_TRACKED_REQUESTS, AllowedSetRecorder

_FULL = int(Level.FULL)
_NO_DRAFTS = (0, 0, 0)
#: Bytes a step takes in the columns besides its tokens and set (step, counts, flags, index).
_STEP_BYTES = 12
_TOKEN_BYTES = 8
#: An empty set: "none recorded" in the allowed_sets column.
_NO_SET = pb.AllowedTokenSet()


class _Rows:
    """One engine step's rows: allowed counts, and the rows themselves for allowed sets."""

    __slots__ = ("counts", "pending", "release", "rows", "with_sets")

    def __init__(self, counts: list[int], rows: npt.NDArray[np.int32] | None,
                 with_sets: bool, release: tuple[Any, Any] | None) -> None:
        self.counts = counts
        self.rows = rows
        self.with_sets = with_sets
        #: (the engine's pool of free tensors, the tensor these rows are): handed back once
        #: the rows are no longer read here (vllm/grammar_tap.py BitmaskPool).
        self.release = release
        #: Requests whose step has not taken its rows yet.
        self.pending = 0

    def give_back(self) -> None:
        """Hands the tensor back to the engine's pool; rows still pending are copied first."""
        if self.release is not None:
            if self.pending and self.rows is not None:
                self.rows = self.rows.copy()
            free, tensor = self.release
            self.release = None
            free.append(tensor)


#: A step as resolved here: request id, step, tokens, accepted, terminated, (drafted,
#: accepted drafts, rolled-back drafts), allowed per token, its row for an allowed set
#: (None: no set; b"": the engine thread did not copy the rows).
Resolved = tuple[str, int, list[int], bool, bool, tuple[int, int, int], list[int],
                 npt.NDArray[np.int32] | bytes | None]


class _Columns:
    """Steps appended as columns, made into one `so_steps` event."""

    def __init__(self, time_ns: int, vocab_size: int) -> None:
        self.time_ns = time_ns
        self.vocab_size = vocab_size
        self.ids: dict[str, int] = {}
        self.index: list[int] = []
        self.step: list[int] = []
        self.counts: list[int] = []
        self.tokens: list[int] = []
        self.allowed: list[int] = []
        self.ok: list[bool] = []
        self.terminated: list[bool] = []
        self.drafts: list[tuple[int, int, int]] = []
        self.sets: list[pb.AllowedTokenSet] = []
        self.truncated: list[bool] = []
        self.any_drafts = self.any_sets = self.any_truncated = False
        self.size = 0

    def add(self, step: Resolved, allowed_set: pb.AllowedTokenSet | None,
            set_truncated: bool) -> None:
        rid, number, tokens, ok, terminated, drafts, per_token, _ = step
        index = self.ids.get(rid)
        if index is None:
            index = self.ids[rid] = len(self.ids)
            self.size += len(rid) + 2
        self.index.append(index)
        self.step.append(number)
        self.counts.append(len(tokens))
        self.tokens.extend(tokens)
        self.allowed.extend(per_token)
        self.ok.append(ok)
        self.terminated.append(terminated)
        self.drafts.append(drafts)
        self.any_drafts = self.any_drafts or drafts != _NO_DRAFTS
        self.sets.append(allowed_set if allowed_set is not None else _NO_SET)
        if allowed_set is not None:
            self.any_sets = True
            self.size += allowed_set.ByteSize()
        self.truncated.append(set_truncated)
        self.any_truncated = self.any_truncated or set_truncated
        self.size += _STEP_BYTES + _TOKEN_BYTES * len(tokens)

    def event(self) -> pb.Event:
        event = pb.Event(time_unix_nano=self.time_ns)
        cols = event.so_steps
        cols.request_ids.extend(self.ids)
        cols.request_index.extend(self.index)
        cols.step.extend(self.step)
        cols.token_counts.extend(self.counts)
        cols.tokens.extend(self.tokens)
        cols.allowed_per_token.extend(self.allowed)
        cols.accepted.extend(self.ok)
        cols.terminated.extend(self.terminated)
        cols.vocab_size = self.vocab_size
        if self.any_drafts:
            drafted, accepted, rolled_back = zip(*self.drafts, strict=True)
            cols.drafted_tokens.extend(drafted)
            cols.accepted_draft_tokens.extend(accepted)
            cols.rolled_back_draft_tokens.extend(rolled_back)
        if self.any_sets:
            cols.allowed_sets.extend(self.sets)
        if self.any_truncated:
            cols.allowed_set_truncated.extend(self.truncated)
        return event


def records(steps: Iterable[tuple[Any, ...]]) -> list[Any]:
    """Steps as the engine thread hands them over in a STEPS event: four slots each, request
    id, step, then either the one token and whether the grammar terminated (a step that
    accepted one token without drafts: nearly all) or the whole step as a tuple (request id,
    step, tokens, accepted, terminated[, drafted, accepted drafts, rolled back]) and its
    terminated flag. Flat, of ints and strs, so a batch of steps held until the sender takes
    it keeps no object the garbage collector tracks (a tuple per step would: vLLM's engine
    thread would pay gen-0 and gen-1 collections for them). Used by the tests; the engine
    thread (vllm/grammar_tap.py) writes the same slots inline."""
    out: list[Any] = []
    for step in steps:
        rid, number, tokens, ok, terminated = step[:5]
        if ok and len(tokens) == 1 and (len(step) == 5 or not any(step[5:8])):
            out.extend((rid, number, tokens[0], terminated))
        else:
            out.extend((rid, number, step, terminated))
    return out


def _steps_of(flat: list[Any]) -> Iterable[tuple[Any, ...]]:
    """The steps of `records`' slots, each as (request id, step, tokens, accepted, terminated
    [, drafts])."""
    slots = iter(flat)
    for rid, number, token, terminated in zip(slots, slots, slots, slots, strict=True):
        if type(token) is tuple:
            yield token
        else:
            yield (rid, number, [token], True, terminated)


def _per_token(rows: list[int], n_tokens: int) -> list[int]:
    """Token k was sampled from row k (after k accepted drafts); rows past the tokens belong
    to drafts the engine rejected; missing rows (no rows taken for the step) are unknown."""
    if len(rows) == n_tokens:
        return rows
    if len(rows) > n_tokens:
        return rows[:n_tokens]
    return rows + [-1] * (n_tokens - len(rows))


def _bounded_set(table: dict[str, Any], key: str, value: Any) -> None:
    """Sets table[key]; past MAX_TRACKED_REQUESTS (summaries lost to a full buffer) the oldest
    entry goes."""
    table[key] = value
    if len(table) > MAX_TRACKED_REQUESTS:
        del table[next(iter(table))]


class StepFrames:
    """Sender-thread state of the columnar capture (see the module docstring)."""

    def __init__(self, recorder: AllowedSetRecorder, chunk_bytes: int) -> None:
        self._recorder = recorder
        self._chunk_bytes = chunk_bytes
        #: request -> (its latest rows not taken by a step yet, first row, row count)
        self._rows_of: dict[str, tuple[_Rows, int, int]] = {}
        #: level key-events: request -> (time, vocabulary, its latest step not sent)
        self._held: dict[str, tuple[int, int, Resolved]] = {}
        #: request -> [counted steps' tokens, sum, min, max] of allowed counts
        self._allowed: dict[str, list[int]] = {}
        self._scratch: npt.NDArray[np.uint8] | None = None
        #: The latest rows kept for allowed sets, their tensor not yet handed back.
        self._last: _Rows | None = None

    # -- ROWS -------------------------------------------------------------------------------
    def rows(self, raw: tuple[Any, ...]) -> None:
        _, _, _, ids, rows, counts, vocab, spec_rows, with_sets, backlog, release = raw
        if self._last is not None:  # its steps came before these rows: done with its tensor
            self._last.give_back()
            self._last = None
        if rows is not None:
            if release is None:
                backlog.taken += rows.nbytes
            if counts is None:
                counts = self._count(rows, vocab)
        snap = _Rows(counts.tolist(), rows if with_sets else None, with_sets, release)
        rows_of = self._rows_of
        if spec_rows is None:
            n = min(len(ids), len(snap.counts))
            rows_of.update(zip(ids[:n], zip(repeat(snap), range(n), repeat(1)), strict=False))
            snap.pending = n
        else:
            for rid, first, count in spec_rows:
                rows_of[rid] = (snap, first, count)
            snap.pending = len(spec_rows)
        if with_sets:
            self._last = snap  # its rows are read when its steps arrive
        else:
            snap.give_back()
        while len(rows_of) > MAX_TRACKED_REQUESTS:
            del rows_of[next(iter(rows_of))]

    def _count(self, rows: npt.NDArray[np.int32], vocab: int) -> npt.NDArray[np.uint32]:
        scratch = self._scratch
        if scratch is None or scratch.shape != scratch_shape(rows, vocab):
            scratch = self._scratch = new_scratch(rows, vocab)
        return allowed_counts(rows, vocab, scratch)

    # -- STEPS ------------------------------------------------------------------------------
    def steps(self, raw: tuple[Any, ...]) -> list[pb.Event]:
        _, time_ns, _, entries, level, vocab = raw
        full = level >= _FULL
        kept: list[Resolved] = []
        for entry in _steps_of(entries):
            step = self._resolve(entry)
            rid = step[0]
            if full or step[1] == 1 or not step[3]:
                self._held.pop(rid, None)  # a later step went out: the held one is not the last
                kept.append(step)
            else:
                _bounded_set(self._held, rid, (time_ns, vocab, step))
        return self._events(time_ns, vocab, kept)

    def _resolve(self, entry: tuple[Any, ...]) -> Resolved:
        rid, number, tokens, ok, terminated = entry[:5]
        drafts: tuple[int, int, int] = entry[5:8] if len(entry) > 5 else _NO_DRAFTS
        found = self._rows_of.pop(rid, None)
        if found is None:
            return (rid, number, tokens, ok, terminated, drafts, [-1] * len(tokens), None)
        snap, first, count = found
        snap.pending -= 1
        per_token = _per_token(snap.counts[first:first + count], len(tokens))
        self._accumulate(rid, per_token)
        row: npt.NDArray[np.int32] | bytes | None = None
        if snap.with_sets:
            row = snap.rows[first] if snap.rows is not None else b""
        return (rid, number, tokens, ok, terminated, drafts, per_token, row)

    def _accumulate(self, rid: str, per_token: Iterable[int]) -> None:
        figures = self._allowed.get(rid)
        for allowed in per_token:
            if allowed < 0:
                continue
            if figures is None:
                figures = [0, 0, allowed, allowed]
                _bounded_set(self._allowed, rid, figures)
            figures[0] += 1
            figures[1] += allowed
            if allowed < figures[2]:
                figures[2] = allowed
            if allowed > figures[3]:
                figures[3] = allowed

    def _events(self, time_ns: int, vocab: int, steps: list[Resolved]) -> list[pb.Event]:
        out: list[pb.Event] = []
        cols = _Columns(time_ns, vocab)
        recorder, chunk = self._recorder, self._chunk_bytes
        for step in steps:
            allowed_set, truncated = None, False
            row = step[7]
            if row is not None:
                # The recorder's own path (same_as_step references, caps, drops by reason).
                holder = pb.StructuredOutputStep(step=step[1])
                recorder.record(holder, step[0], row if isinstance(row, bytes)
                                else row.astype("<i4", copy=False).tobytes(), vocab)
                truncated = holder.allowed_set_truncated
                if holder.HasField("allowed_set"):
                    allowed_set = holder.allowed_set
            if cols.step and cols.size + _STEP_BYTES + (
                    allowed_set.ByteSize() if allowed_set is not None else 0) > chunk:
                out.append(cols.event())
                cols = _Columns(time_ns, vocab)
            cols.add(step, allowed_set, truncated)
        if cols.step:
            out.append(cols.event())
        return out

    # -- a request's summary ----------------------------------------------------------------
    def finish(self, request_id: str) -> tuple[list[pb.Event], list[int] | None]:
        """At the request's summary: its held last step (level key-events) as an event, and
        its allowed-count figures [tokens counted, sum, min, max] (None: none counted)."""
        found = self._rows_of.pop(request_id, None)
        if found is not None:
            found[0].pending -= 1
        figures = self._allowed.pop(request_id, None)
        held = self._held.pop(request_id, None)
        if held is None:
            return [], figures
        time_ns, vocab, step = held
        return self._events(time_ns, vocab, [step]), figures
