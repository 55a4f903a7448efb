"""What the columnar step capture costs vLLM's engine thread, checked as behaviour.

- The steps a batch holds until the sender takes them keep no object the garbage collector
  tracks (tuples per step made vLLM's engine thread run gen-0 and gen-1 collections), and
  every kind of step (one token, several, rejected, with drafts) still reaches the columns
  whole.
- While the sender lags, the bitmask pool grows into the backlog budget instead of copying
  the rows into fresh memory every engine step; past the budget it copies and then counts as
  before, and running dry wakes the sender.
"""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any

import numpy as np

from vllm_audit import step_columns
from vllm_hooks.config.levels import Level
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.events import raw_events as raw
from vllm_hooks.events.capture import CapturePolicy
from vllm_hooks.events.raw_events import EventConverter
from vllm_hooks.runtime import HookRuntime
from vllm_hooks.vllm.grammar_tap import AuditedGrammar, BitmaskPool, BitmaskTap
from vllm_hooks.vllm.structured_output_patch import wrap_structured_output_manager

VOCAB = 256


class _Grammar:
    """A backend grammar that accepts unless told, terminating when told."""

    def __init__(self) -> None:
        self.reject = False
        self.terminated = False

    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        return not self.reject

    def is_terminated(self) -> bool:
        return self.terminated

    def fill_bitmask(self, bitmask: Any, index: int) -> None:
        pass


def _rows(allowed: int, n: int = 1) -> np.ndarray:
    bits = np.zeros(VOCAB, dtype=np.uint8)
    bits[:allowed] = 1
    row = np.packbits(bits, bitorder="little").view("<i4")
    return np.stack([row] * n)


def test_held_steps_keep_nothing_the_collector_tracks() -> None:
    rt = HookRuntime(HookSettings(enabled=True, hmac_key=b"k", level=Level.FULL), "test")
    tap = BitmaskTap(rt, VOCAB)
    grammars = [AuditedGrammar(_Grammar(), f"req-{i}", tap, "xgrammar") for i in range(64)]
    tap.snapshot(_rows(5, len(grammars)), [g.request_id for g in grammars], None)
    for step in range(3):
        for g in grammars:
            g.accept_tokens(g.request_id, [100 + step])  # one token: the common step
    assert len(tap.entries) == 3 * 64 * 4
    assert not any(gc.is_tracked(slot) for slot in tap.entries)


def test_every_kind_of_step_reaches_the_columns_whole() -> None:
    settings = HookSettings(enabled=True, hmac_key=b"k", level=Level.FULL)
    rt = HookRuntime(settings, "test")
    tap = BitmaskTap(rt, VOCAB)
    inner = _Grammar()
    grammar = AuditedGrammar(inner, "r", tap, "xgrammar")
    tap.snapshot(_rows(3), ["r"], None)
    grammar.accept_tokens("r", [7])  # one token
    tap.snapshot(_rows(4), ["r"], None)
    grammar.accept_tokens("r", [8, 9])  # several tokens, no drafts
    tap.snapshot(_rows(5, 3), ["r"], [("r", 0, 3)])
    grammar.pending_drafted, grammar.pending_rolled_back = 2, 2
    grammar.accept_tokens("r", [1, 2])  # one of two drafts accepted
    tap.snapshot(_rows(6), ["r"], None)
    inner.reject = True
    grammar.accept_tokens("r", [4])  # rejected
    inner.reject, inner.terminated = False, True
    tap.snapshot(_rows(7), ["r"], None)
    grammar.accept_tokens("r", [0])  # one token, the grammar terminated
    grammar.finish("FINISHED_STOPPED")
    converter = EventConverter(settings, CapturePolicy(b"k"))
    events = [e for r in rt.buffer.drain(100) for e in converter.convert(r)]
    steps = [s.so_step for e in events if e.WhichOneof("body") == "so_steps"
             for s in step_columns.expand(e)]
    got = [(s.step, list(s.accepted_tokens), s.accepted, s.terminated, s.drafted_tokens,
            s.accepted_draft_tokens, s.rolled_back_draft_tokens, list(s.allowed_per_token))
           for s in steps]
    assert got == [
        (1, [7], True, False, 0, 0, 0, [3]),
        (2, [8, 9], True, False, 0, 0, 0, [4, -1]),
        (3, [1, 2], True, False, 2, 1, 1, [5, 5]),
        (4, [4], False, False, 0, 0, 0, [6]),
        (5, [0], True, True, 0, 0, 0, [7]),
    ]
    summary = events[-1].so_summary
    assert (summary.steps, summary.rejected_tokens, summary.terminated) == (5, 1, True)


class _Manager:
    """vLLM's StructuredOutputManager as the pool sees it: one tensor, refilled each step."""

    def __init__(self, rows: int) -> None:
        self._grammar_bitmask = np.zeros((rows, VOCAB // 32), dtype=np.int32)

    def _create_grammar(self, request: Any) -> Any:
        return _Grammar()

    def grammar_bitmask(self, requests: dict[str, Any], ids: list[str],
                        spec: dict[str, list[int]]) -> np.ndarray:
        self._grammar_bitmask[:] = _rows(9, len(self._grammar_bitmask))
        return self._grammar_bitmask[:len(ids)]


def test_a_lagging_sender_gets_tensors_of_the_pool_not_copies_up_to_the_budget() -> None:
    rows = 4
    size = rows * VOCAB // 8  # bytes of one tensor
    extra = 6  # tensors the budget holds beyond the pool's first SLOTS
    settings = HookSettings(enabled=True, hmac_key=b"k", level=Level.FULL,
                            allowed_sets_backlog_bytes=extra * size)
    rt = HookRuntime(settings, "test")
    manager = _Manager(rows)
    tap = BitmaskTap(rt, VOCAB)
    wrap_structured_output_manager(manager, tap)
    so = SimpleNamespace(structured_output_key=(SimpleNamespace(name="JSON"), "{}"))
    request = SimpleNamespace(request_id="r", structured_output_request=so,
                              sampling_params=SimpleNamespace(
                                  structured_outputs=SimpleNamespace(_backend="x")))
    so._grammar = manager._create_grammar(request)
    ids = ["r"] * rows
    handed = []
    lag = BitmaskPool.SLOTS - 1 + extra  # engine steps before the sender first runs
    for _ in range(lag + 2):
        rt.buffer.wakeup.clear()
        before = tap.pool.allocated if tap.pool is not None else 0
        manager.grammar_bitmask({"r": request}, ids, {})
        (rows_event,) = [r for r in rt.buffer.drain(10) if r[0] == raw.ROWS]
        handed.append(rows_event)
        assert rt.buffer.wakeup.is_set() == (tap.pool is not None and (
            tap.pool.allocated > before or rows_event[10] is None))
    # No copy while the pool could grow: the filled tensor itself went to the sender.
    assert [r[10] is not None for r in handed] == [True] * lag + [False] * 2
    assert tap.pool is not None
    assert (tap.pool.allocated, tap.pool.extra_bytes) == (BitmaskPool.SLOTS + extra,
                                                          extra * size)
    # Past the budget: the pool's tensors leave no room for copies, so the engine counts.
    assert handed[-2][4] is None and handed[-2][5] is not None
    assert tap.backlog.waiting() == 0
    # The sender takes them all and hands the tensors back: no further tensor is made.
    converter = EventConverter(settings, CapturePolicy(b"k"))
    for event in handed:
        converter.convert(event)
    assert len(tap.pool.free) == lag
    manager.grammar_bitmask({"r": request}, ids, {})
    assert tap.pool.allocated == BitmaskPool.SLOTS + extra
    assert rt.buffer.drain(10)[-1][10] is not None
