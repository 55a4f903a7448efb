"""Structured-output tap: a delegating proxy of vLLM's `StructuredOutputGrammar`.

Wrapping the grammar object (instead of subclassing a backend) works across xgrammar,
guidance, outlines and lm-format-enforcer. The proxy counts steps, accepted and rejected
tokens for the per-request summary and, from level key-events on, captures every step for
the sender thread, which makes the events (events/step_frames.py): at FULL one per step
with the number of tokens the bitmask allowed before each token was sampled, at KEY_EVENTS
only the first step, every rejected step and the last.

Capture is columnar: per engine step the engine thread hands over one copy of the bitmask
(the rows; the sender popcounts them, `allowed_counts`) and one list of small tuples, one
per request step. Building events, counting rows and encoding sets are the sender's.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt

from vllm_hooks.config.levels import Level
from vllm_hooks.errors import ERRORS
from vllm_hooks.events import raw_events as raw
from vllm_hooks.events.allowed_counts import allowed_counts, new_scratch, scratch_shape
from vllm_hooks.events.self_timing import SelfTimer
from vllm_hooks.runtime import HookRuntime

_KEY_EVENTS = int(Level.KEY_EVENTS)
_WITH_SETS = int(Level.FULL_WITH_ALLOWED_SETS)


class RowsBacklog:
    """Bytes of bitmask copies handed to the sender and not yet taken by it. Each counter has
    one writer (the engine thread adds, the sender thread takes), so no lock is needed."""

    __slots__ = ("handed", "taken")

    def __init__(self) -> None:
        self.handed = 0
        self.taken = 0

    def waiting(self) -> int:
        return self.handed - self.taken


class BitmaskPool:
    """Bitmask tensors for vLLM's StructuredOutputManager to fill, in rotation, so the hook can
    hand the sender the filled one itself instead of a copy ("where the backend allows": a
    manager that keeps its reused tensor in `_grammar_bitmask`, as vLLM's does).

    vLLM fills one tensor per engine step and reuses it the next; it is done with a step's
    tensor when it asks for the next step's bitmask. So once a step is filled, the filled
    tensor goes to the sender and the manager gets another of the same shape for the next
    step: one taken back from the sender (it releases each when it no longer reads it) or a
    new one. `SLOTS` tensors always may be made; more while their bytes and the copies
    waiting fit the backlog budget (`allowed_sets_backlog_bytes`, which bounds the copies
    too: a tensor made is memory a copy would have taken, and a copy into fresh memory costs
    the engine thread its page faults every time, ~200 us at 256 rows x 128k, a tensor kept
    only once). Tensors made are kept for reuse. With none free and none to make, the step
    is copied as before. Running dry also wakes the sender, which hands tensors back."""

    SLOTS = 4

    def __init__(self, manager: Any, wakeup: Any = None) -> None:
        self.manager = manager
        #: Tensors the sender released (appended by the sender thread, popped by the engine's).
        self.free: deque[Any] = deque()
        self.allocated = 1  # vLLM's own
        #: Bytes of the tensors made beyond SLOTS: they count against the backlog budget.
        self.extra_bytes = 0
        #: The sender's wake-up (a threading.Event): set when no tensor is free.
        self.wakeup = wakeup

    def swap(self, backlog: RowsBacklog, budget: int) -> Any | None:
        """The filled tensor, with the manager given another one; None when none is free
        and none may be made (or the manager has no tensor to swap: then the rows are
        copied)."""
        manager = self.manager
        filled = getattr(manager, "_grammar_bitmask", None)
        if filled is None:
            return None
        free = self.free
        if free:
            fresh = free.pop()
        else:
            if self.wakeup is not None:
                self.wakeup.set()
            size = filled.nbytes
            if self.allocated < self.SLOTS:
                pass
            elif self.extra_bytes + backlog.waiting() + size <= budget:
                self.extra_bytes += size
            else:
                return None
            new_empty = getattr(filled, "new_empty", None)  # a torch tensor's
            fresh = new_empty(filled.shape) if new_empty is not None else np.empty_like(filled)
            self.allocated += 1
        manager._grammar_bitmask = fresh
        return filled


class BitmaskTap:
    """Per-engine state shared by the proxies of one StructuredOutputManager.

    From level key-events on, an engine step costs the engine thread the filled bitmask (or a
    copy of it: a memcpy, cheaper than counting it) handed to the sender as a ROWS event, and
    one record of four slots per request step extended onto `entries` (step_frames.py says
    the format: no object the garbage collector tracks outlives the call, so holding a batch
    of steps does not make vLLM's engine thread collect); the entries go to the sender as one
    STEPS event when sealed (at the next bitmask, at the end of vLLM's update_from_output, and
    before any request's summary, so a request's steps always precede its summary). The
    sender thread counts, resolves and encodes them (events/step_frames.py)."""

    def __init__(self, runtime: HookRuntime, vocab_size: int) -> None:
        self.runtime = runtime
        self.vocab_size = vocab_size
        #: True while vLLM fills the bitmask: under speculative decoding it calls
        #: accept_tokens()/rollback() there as bookkeeping, which are not steps.
        self.filling = False
        #: Whether the current engine step's steps are captured (level key-events and up when
        #: its bitmask was filled): one attribute read on the accept path.
        self.capture = False
        #: Steps accepted since the last seal (engine thread only), four slots a step:
        #: request id, step, token (an int) or the whole step (a tuple), terminated
        #: (events/step_frames.py `records`).
        self.entries: list[Any] = []
        self.backlog = RowsBacklog()
        #: Set by structured_output_patch when the manager's bitmask can be rotated.
        self.pool: BitmaskPool | None = None
        #: The popcount's per-word counts, when the engine thread counts (a sender far
        #: behind: no copy); only the engine thread uses it.
        self._scratch: npt.NDArray[np.uint8] | None = None

    def seal(self) -> None:
        """Hands the steps accepted so far to the sender (one STEPS event)."""
        entries = self.entries
        if entries:
            self.entries = []
            self.runtime.buffer.offer(
                (raw.STEPS, time.time_ns(), "", entries, self.runtime.level, self.vocab_size))

    def snapshot(self, bitmask: npt.NDArray[np.int32], request_ids: list[str],
                 spec_rows: list[tuple[str, int, int]] | None) -> None:
        """Level key-events and up, once per engine step: the rows of this step for the sender
        (a copy: vLLM refills its array next step), or, while more than the backlog cap of
        copies waits for the sender, the counts made here and no rows (sets are then shed,
        counted; steps never are)."""
        self.seal()
        self.capture = True
        rt = self.runtime
        with_sets = rt.level >= _WITH_SETS
        backlog = self.backlog
        size = bitmask.nbytes
        rows: npt.NDArray[np.int32] | None = None
        counts: npt.NDArray[np.uint32] | None = None
        release: tuple[deque[Any], Any] | None = None
        budget = rt.settings.allowed_sets_backlog_bytes
        pool = self.pool
        if pool is not None and bitmask.dtype == _LE_INT32:
            filled = pool.swap(backlog, budget)
            if filled is not None:
                release = (pool.free, filled)
        if release is not None:
            rows = bitmask  # the filled tensor's own rows: vLLM fills another one next step
        elif backlog.waiting() + (pool.extra_bytes if pool is not None else 0) + size <= budget:
            rows = bitmask.astype(_LE_INT32)  # always a copy
            backlog.handed += size
        else:
            counts = self.counts(bitmask)
        rt.buffer.offer((raw.ROWS, 0, "", list(request_ids), rows, counts, self.vocab_size,
                         spec_rows, with_sets, backlog, release))

    def counts(self, bitmask: npt.NDArray[np.int32]) -> npt.NDArray[np.uint32]:
        """Allowed count per row of this step's bitmask."""
        scratch = self._scratch
        if scratch is None or scratch.shape != scratch_shape(bitmask, self.vocab_size):
            scratch = self._scratch = new_scratch(bitmask, self.vocab_size)
        return allowed_counts(bitmask, self.vocab_size, scratch)


_LE_INT32 = np.dtype("<i4")


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
        self.first_rejected_token = -1
        self.first_rejected_step = -1
        self.drafted = 0
        self.accepted_drafts = 0
        self.draft_rollbacks = 0
        self.rolled_back_drafts = 0
        #: Set while vLLM fills this step's rows (speculative decoding, see
        #: structured_output_patch): the step's drafts and the fill's rollbacks.
        self.pending_drafted = 0
        self.pending_rolled_back = 0

    # -- the StructuredOutputGrammar interface ---------------------------------------------
    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        ok: bool = self._inner.accept_tokens(request_id, tokens)
        tap = self.tap
        if tap.filling:
            return ok
        try:
            if ok and not self.pending_drafted and not self.pending_rolled_back:
                # Paid per request per step at every level: a step and its tokens, and from
                # level key-events on one record of ints and a str (the tuple is freed at once,
                # nothing the garbage collector tracks is kept: see BitmaskTap).
                self.steps = steps = self.steps + 1
                n_tokens = len(tokens)
                self.accepted += n_tokens
                if tap.capture:
                    if n_tokens == 1:
                        tap.entries.extend(
                            (self.request_id, steps, tokens[0], self._inner.is_terminated()))
                    else:
                        self._capture_whole(steps, tokens, True, self._inner.is_terminated())
            else:
                self._record_step(tokens, ok)
        except Exception as exc:
            ERRORS.record("grammar.accept_tokens", exc)
        return ok

    def _count_step(self, tokens: list[int], ok: bool) -> None:
        """accept_tokens' bookkeeping as a method of its own (the timed proxy clocks it; the
        untimed one has it inline, a call less per request per step)."""
        try:
            if ok and not self.pending_drafted and not self.pending_rolled_back:
                self.steps = steps = self.steps + 1
                n_tokens = len(tokens)
                self.accepted += n_tokens
                tap = self.tap
                if tap.capture:
                    if n_tokens == 1:
                        tap.entries.extend(
                            (self.request_id, steps, tokens[0], self._inner.is_terminated()))
                    else:
                        self._capture_whole(steps, tokens, True, self._inner.is_terminated())
            else:
                self._record_step(tokens, ok)
        except Exception as exc:
            ERRORS.record("grammar.accept_tokens", exc)

    def validate_tokens(self, tokens: list[int]) -> list[int]:
        result: list[int] = self._inner.validate_tokens(tokens)
        return result

    def rollback(self, num_tokens: int) -> None:
        self._inner.rollback(num_tokens)
        if self.tap.filling:
            # vLLM advanced the grammar over the drafts to fill their rows and now undoes it,
            # every draft, accepted or not: it advances again over those the engine accepts.
            # Only the rest are rolled back for good, known once the step's tokens arrive.
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
        """A rejected step, or one with drafts (speculative decoding): the rare path."""
        self.steps = steps = self.steps + 1
        n_tokens = len(tokens)
        if ok:
            self.accepted += n_tokens
        else:
            self.rejected += n_tokens
            if self.first_rejected_step < 0:
                self.first_rejected_step = steps
                self.first_rejected_token = tokens[0] if tokens else -1
        drafted = self.pending_drafted
        rolled_back = self.pending_rolled_back
        accepted_drafts = 0
        if drafted or rolled_back:
            self.pending_drafted = self.pending_rolled_back = 0
            accepted_drafts = min(drafted, max(n_tokens - 1, 0))
            self.drafted += drafted
            self.accepted_drafts += accepted_drafts
            # The fill's rollback undid the accepted drafts too, and accept_tokens has just
            # advanced over them again: what stays undone is the drafts the engine rejected.
            rolled_back = max(rolled_back - accepted_drafts, 0)
            if rolled_back:
                self.draft_rollbacks += 1
                self.rolled_back_drafts += rolled_back
        if self.tap.capture:
            self._capture_whole(steps, tokens, ok, bool(self._inner.is_terminated()),
                                (drafted, accepted_drafts, rolled_back))

    def _capture_whole(self, steps: int, tokens: list[int], ok: bool, terminated: bool,
                       drafts: tuple[int, int, int] | None = None) -> None:
        """A step that is not one accepted token without drafts, as a whole tuple in its
        record (events/step_frames.py `records`): rare, so its tuple may be kept."""
        step: tuple[Any, ...] = (self.request_id, steps, list(tokens), ok, terminated)
        if drafts is not None:
            step += drafts
        self.tap.entries.extend((self.request_id, steps, step, terminated))

    def finish(self, status: str) -> None:
        """At the request's end: the steps captured so far (its own among them), then the
        summary, so the sender sees the request's last step before its summary."""
        tap = self.tap
        tap.seal()
        tap.runtime.buffer.offer(self.summary_event(status))

    def summary_event(self, status: str = "") -> tuple[Any, ...]:
        """`status`: vLLM's request status at the end, kept as the fate of a rejection. The
        allowed-token min/max/mean are the sender's (it counts the rows): -1 here."""
        return (
            raw.SO_SUMMARY,
            time.time_ns(),
            self.request_id,
            self.backend,
            self.steps,
            self.accepted,
            self.rejected,
            -1,
            -1,
            -1.0,
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


class TimedAuditedGrammar(AuditedGrammar):
    """VLLM_AUDIT_SELF_TIMING: the proxy with its per-step bookkeeping clocked (chosen when
    the grammar is created, so the untimed proxy never checks a flag)."""

    def __init__(self, inner: Any, request_id: str, tap: BitmaskTap, backend: str,
                 timer: SelfTimer) -> None:
        super().__init__(inner, request_id, tap, backend)
        self.timer = timer

    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        ok: bool = self._inner.accept_tokens(request_id, tokens)
        if not self.tap.filling:
            timer = self.timer
            start = timer.clock()
            self._count_step(tokens, ok)  # the same work as the untimed proxy, clocked
            timer.add(timer.clock() - start)
        return ok
