"""Structured-output tap: a delegating proxy of vLLM's `StructuredOutputGrammar`.

Wrapping the grammar object (instead of subclassing a backend) works across xgrammar,
guidance, outlines and lm-format-enforcer. The proxy counts steps, accepted and rejected
tokens for the per-request summary and, at level FULL, emits one event per step with the
number of tokens the bitmask allowed before the token was sampled.

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

_FULL = int(Level.FULL)
_WITH_SETS = int(Level.FULL_WITH_ALLOWED_SETS)


def allowed_counts(bitmask: npt.NDArray[np.int32], vocab_size: int) -> npt.NDArray[np.int64]:
    """Allowed tokens per bitmask row: popcount of the first `vocab_size` bits.

    Rows are int32 words, bit i of word w allowing token 32*w+i. Bits past vocab_size are
    padding (a row reset to "allow all" is -1, i.e. every bit set) and must not count.
    """
    words = bitmask.view(np.uint32)
    full_words, rem = divmod(vocab_size, 32)
    counts: npt.NDArray[np.int64] = np.bitwise_count(words[:, :full_words]).sum(
        axis=1, dtype=np.int64
    )
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
        rows: list[tuple[Any, int]],
    ) -> None:
        """`rows`: (grammar, row index of the token to be sampled next) per request."""
        counts = allowed_counts(bitmask, self.vocab_size)
        with_sets = self.runtime.level >= _WITH_SETS
        for grammar, row in rows:
            if isinstance(grammar, AuditedGrammar):
                grammar.pending_allowed = int(counts[row])
                if with_sets:
                    grammar.pending_bitmask = bitmask[row].astype("<i4", copy=False).tobytes()


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
        self.pending_allowed = -1
        self.pending_bitmask: bytes | None = None

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
        if not self.tap.filling:
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
        allowed = self.pending_allowed
        bitmask = self.pending_bitmask
        self.pending_allowed = -1
        self.pending_bitmask = None
        if allowed >= 0:
            self.allowed_n += 1
            self.allowed_sum += allowed
            if self.allowed_min < 0 or allowed < self.allowed_min:
                self.allowed_min = allowed
            if allowed > self.allowed_max:
                self.allowed_max = allowed
        rt = self.tap.runtime
        if rt.level >= _FULL:
            rt.buffer.offer(
                (
                    raw.STEP,
                    time.time_ns(),
                    self.request_id,
                    self.steps,
                    list(tokens),
                    allowed,
                    ok,
                    bool(self._inner.is_terminated()),
                    bitmask,
                    self.tap.vocab_size,
                )
            )

    def summary_event(self) -> tuple[Any, ...]:
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
        )
