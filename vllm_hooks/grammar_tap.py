"""Structured-output tap: a delegating proxy of vLLM's `StructuredOutputGrammar`.

Wrapping the grammar object (instead of subclassing a backend) works across xgrammar,
guidance, outlines and lm-format-enforcer. The proxy counts steps, accepted and rejected
tokens for the per-request summary and, at level FULL, emits one event per step with the
number of tokens the bitmask allowed before each token was sampled (at KEY_EVENTS only the
first step, every rejected step and the last).

Allowed-token counts come from one vectorised popcount over the whole bitmask array per
engine step (see `allowed_counts`), not from per-token Python work.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from . import raw_events as raw
from .errors import ERRORS
from .runtime import HookRuntime
from .settings import Level

_KEY_EVENTS = int(Level.KEY_EVENTS)
_FULL = int(Level.FULL)
_WITH_SETS = int(Level.FULL_WITH_ALLOWED_SETS)


def allowed_counts(bitmask: npt.NDArray[np.int32], vocab_size: int) -> npt.NDArray[np.int64]:
    """Allowed tokens per bitmask row: popcount of the first `vocab_size` bits.

    Rows are int32 words, bit i of word w allowing token 32*w+i. Bits past vocab_size are
    padding (a row reset to "allow all" is -1, i.e. every bit set) and must not count. Whole
    word pairs are counted through a uint64 view: half the elements, half the time (~260 µs
    instead of ~520 µs for 256 rows at a 128k vocabulary on this machine).
    """
    words = bitmask.view(np.uint32)
    full_words, rem = divmod(vocab_size, 32)
    full_words = min(full_words, words.shape[1])
    pairs = full_words // 2
    counts: npt.NDArray[np.int64] = np.bitwise_count(
        words[:, : 2 * pairs].view(np.uint64)
    ).sum(axis=1, dtype=np.int64)
    if full_words % 2:
        counts += np.bitwise_count(words[:, full_words - 1]).astype(np.int64)
    if rem and words.shape[1] > full_words:
        tail = words[:, full_words] & np.uint32((1 << rem) - 1)
        counts += np.bitwise_count(tail).astype(np.int64)
    return counts


class BitmaskTap:
    """Per-engine state shared by the proxies of one StructuredOutputManager."""

    def __init__(self, runtime: HookRuntime, vocab_size: int) -> None:
        self.runtime = runtime
        self.vocab_size = vocab_size
        #: True while vLLM fills the bitmask: under speculative decoding it calls
        #: accept_tokens()/rollback() there as bookkeeping, which are not steps.
        self.filling = False

    def assign(
        self,
        bitmask: npt.NDArray[np.int32],
        rows: list[tuple[Any, int, int]],
    ) -> None:
        """`rows`: (grammar, first row, row count) per request. A request has one row per
        scheduled draft token (speculative decoding) and one bonus row; the k-th token the
        engine accepts this step is sampled from row first + k."""
        counts = allowed_counts(bitmask, self.vocab_size)
        rt = self.runtime
        with_sets = rt.level >= _WITH_SETS
        # Copied rows wait in the buffer for the sender thread: past the backlog cap (reckoned
        # as if every buffered event held a row) steps go without their set, counted.
        copy_rows = with_sets and (
            len(rt.buffer) * bitmask.shape[1] * 4 <= rt.settings.allowed_sets_backlog_bytes)
        for grammar, first, n_rows in rows:
            if isinstance(grammar, AuditedGrammar):
                grammar.pending_rows = counts[first:first + n_rows].tolist()
                if copy_rows:
                    # A copy (vLLM reuses its array), ~1 µs at 128k tokens; the sender thread
                    # encodes it (allowed_set_encoder.py), never this thread.
                    grammar.pending_bitmask = bitmask[first].astype("<i4", copy=False).tobytes()
                elif with_sets:
                    grammar.pending_bitmask = raw.ROW_OVER_BACKLOG


class AuditedGrammar:
    """Delegates every call to the wrapped grammar; observes, never changes, its answers."""

    def __init__(
        self, inner: Any, request_id: str, tap: BitmaskTap, backend: str
    ) -> None:
        self._inner = inner
        self.request_id = request_id
        self.tap = tap
        self.backend = backend
        self.steps = 0
        self.accepted = 0
        self.rejected = 0
        self.rollbacks = 0
        self.allowed_n = 0
        self.allowed_sum = 0
        self.allowed_min = -1
        self.allowed_max = -1
        self.first_rejected_token = -1
        self.first_rejected_step = -1
        self.drafted = 0
        self.accepted_drafts = 0
        self.draft_rollbacks = 0
        self.rolled_back_drafts = 0
        #: Set while vLLM fills this step's rows (see BitmaskTap.assign and the adapter).
        self.pending_rows: list[int] = []
        self.pending_bitmask: bytes | None = None
        self.pending_drafted = 0
        self.pending_rolled_back = 0
        #: Level key-events: the latest step not yet offered, offered at finish as the last.
        self.held_step: tuple[Any, ...] | None = None

    # -- the StructuredOutputGrammar interface ---------------------------------------------
    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        ok: bool = self._inner.accept_tokens(request_id, tokens)
        if not self.tap.filling:
            try:
                self._record_step(tokens, ok)
            except Exception as exc:
                ERRORS.record("grammar.accept_tokens", exc)
        return ok

    def validate_tokens(self, tokens: list[int]) -> list[int]:
        result: list[int] = self._inner.validate_tokens(tokens)
        return result

    def rollback(self, num_tokens: int) -> None:
        self._inner.rollback(num_tokens)
        if self.tap.filling:
            # vLLM advanced the grammar over the drafts to fill their rows and now undoes it.
            self.draft_rollbacks += 1
            self.rolled_back_drafts += num_tokens
            self.pending_rolled_back += num_tokens
        else:
            self.rollbacks += 1

    def fill_bitmask(self, bitmask: Any, batch_index: int) -> None:
        self._inner.fill_bitmask(bitmask, batch_index)

    def is_terminated(self) -> bool:
        terminated: bool = self._inner.is_terminated()
        return terminated

    def reset(self) -> None:
        self._inner.reset()

    def __getattr__(self, name: str) -> Any:
        # Anything a backend grammar grows later keeps working through the proxy.
        return getattr(self._inner, name)

    # -- audit -----------------------------------------------------------------------------
    def _record_step(self, tokens: list[int], ok: bool) -> None:
        self.steps += 1
        if ok:
            self.accepted += len(tokens)
        else:
            self.rejected += len(tokens)
            if self.first_rejected_step < 0:
                self.first_rejected_step = self.steps
                self.first_rejected_token = tokens[0] if tokens else -1
        rows = self.pending_rows
        bitmask = self.pending_bitmask
        drafted = self.pending_drafted
        rolled_back = self.pending_rolled_back
        self.pending_rows = []
        self.pending_bitmask = None
        self.pending_drafted = 0
        self.pending_rolled_back = 0
        # Token k was sampled from row k (after k accepted drafts); rows past the tokens belong
        # to drafts the engine rejected. Missing rows (level raised mid-request) are unknown.
        per_token = [rows[k] if k < len(rows) else -1 for k in range(len(tokens))]
        for allowed in per_token:
            if allowed >= 0:
                self.allowed_n += 1
                self.allowed_sum += allowed
                if self.allowed_min < 0 or allowed < self.allowed_min:
                    self.allowed_min = allowed
                if allowed > self.allowed_max:
                    self.allowed_max = allowed
        accepted_drafts = min(drafted, max(len(tokens) - 1, 0))
        self.drafted += drafted
        self.accepted_drafts += accepted_drafts
        rt = self.tap.runtime
        level = rt.level
        if level < _KEY_EVENTS:
            return
        step = (
            raw.STEP,
            time.time_ns(),
            self.request_id,
            self.steps,
            list(tokens),
            per_token[0] if per_token else -1,
            ok,
            bool(self._inner.is_terminated()),
            bitmask,
            self.tap.vocab_size,
            per_token,
            drafted,
            accepted_drafts,
            rolled_back,
        )
        if level >= _FULL or self.steps == 1 or not ok:
            rt.buffer.offer(step)
            self.held_step = None
        else:
            # Key events keep the first step, every rejection and the last, known at finish.
            self.held_step = step

    def finish(self, status: str) -> None:
        """At the request's end: the held last step (level key-events), then the summary."""
        buffer = self.tap.runtime.buffer
        held, self.held_step = self.held_step, None
        if held is not None:
            buffer.offer(held)
        buffer.offer(self.summary_event(status))

    def summary_event(self, status: str = "") -> tuple[Any, ...]:
        """`status`: vLLM's request status at the end, kept as the fate of a rejection."""
        mean = self.allowed_sum / self.allowed_n if self.allowed_n else -1.0
        return (
            raw.SO_SUMMARY,
            time.time_ns(),
            self.request_id,
            self.backend,
            self.steps,
            self.accepted,
            self.rejected,
            self.allowed_min,
            self.allowed_max,
            mean,
            bool(self._inner.is_terminated()),
            self.rollbacks,
            self.first_rejected_token,
            self.first_rejected_step,
            self.drafted,
            self.accepted_drafts,
            self.draft_rollbacks,
            self.rolled_back_drafts,
            status if self.rejected else "",
        )
