"""Columnar step capture round-trips to exactly the events of the per-step path.

The same steps go through both paths the sender has: the per-step raw STEP tuples (one
`so_step` message each, what a hook of the previous release sends) and the engine thread's
ROWS + STEPS events (one `so_steps` message of columns, expanded by
`vllm_audit.step_columns`). The expanded events must equal the per-step ones byte for byte,
allowed sets and their `same_as_step` references included, and the summary's allowed-count
figures must be the ones the per-step proxy computed.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from vllm_audit import allowed_sets as sets
from vllm_audit import step_columns
from vllm_audit.v1 import events_pb2 as pb
from vllm_hooks.config.levels import Level
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.events import raw_events as raw
from vllm_hooks.events.capture import CapturePolicy
from vllm_hooks.events.raw_events import EventConverter
from vllm_hooks.events.step_frames import records
from vllm_hooks.vllm.grammar_tap import RowsBacklog

VOCAB = 200
TIME = 1_700_000_000_000_000_000


def bitmask(rng: random.Random, rows: int) -> np.ndarray:
    """Rows drawn from a few grammar states (sets repeat, as they do) plus random ones."""
    states = [sorted(rng.sample(range(VOCAB), k)) for k in (1, 3, 150)]
    out = np.zeros((rows, (VOCAB + 31) // 32), dtype=np.int32)
    for r in range(rows):
        ids = rng.choice(states) if rng.random() < 0.7 else rng.sample(range(VOCAB), 40)
        bits = np.zeros(out.shape[1] * 32, dtype=np.uint8)
        bits[list(ids)] = 1
        out[r] = np.packbits(bits, bitorder="little").view("<i4")
    return out


def allowed(row: np.ndarray) -> int:
    return int(np.unpackbits(row.view(np.uint8), bitorder="little")[:VOCAB].sum())


def scenario(seed: int, spec: bool) -> list[dict[str, Any]]:
    """Engine steps: per step the requests' rows and what each accepted."""
    rng = random.Random(seed)
    ids = [f"req-{i}" for i in range(5)]
    steps_of = dict.fromkeys(ids, 0)
    out = []
    for _ in range(6):
        live = [r for r in ids if rng.random() < 0.85]
        drafts = {r: rng.randint(0, 2) for r in live} if spec else {}
        spec_rows, first = [], 0
        for r in live:
            count = drafts.get(r, 0) + 1
            spec_rows.append((r, first, count))
            first += count
        rows = bitmask(rng, first)
        accepts = []
        for r, first_row, count in spec_rows:
            steps_of[r] += 1
            n = rng.randint(1, count) if spec else 1
            tokens = [rng.randrange(VOCAB) for _ in range(n)]
            ok = rng.random() > 0.1
            per_token = [allowed(rows[first_row + k]) for k in range(min(n, count))]
            per_token += [-1] * (n - len(per_token))
            accepted_drafts = min(drafts.get(r, 0), n - 1)
            draft = (drafts.get(r, 0), accepted_drafts, drafts.get(r, 0) - accepted_drafts) \
                if spec else (0, 0, 0)
            accepts.append((r, steps_of[r], tokens, ok, rng.random() < 0.2, draft, per_token,
                            rows[first_row]))
        out.append({"ids": live, "rows": rows, "spec_rows": spec_rows if spec else None,
                    "accepts": accepts})
    return out


def per_step_events(engine_steps: list[dict[str, Any]], level: Level, settings: HookSettings
                    ) -> tuple[list[pb.Event], dict[str, pb.Event]]:
    """The per-step path, as the proxy of the previous release offered and converted it."""
    converter = EventConverter(settings, CapturePolicy(b"k"))
    with_sets = level >= Level.FULL_WITH_ALLOWED_SETS
    events: list[pb.Event] = []
    held: dict[str, tuple[Any, ...]] = {}
    figures: dict[str, list[int]] = {}
    for engine_step in engine_steps:
        for rid, step, tokens, ok, term, draft, per_token, row in engine_step["accepts"]:
            f = figures.setdefault(rid, [0, 0, -1, -1])
            for a in per_token:
                if a >= 0:
                    f[0], f[1] = f[0] + 1, f[1] + a
                    f[2] = a if f[2] < 0 else min(f[2], a)
                    f[3] = max(f[3], a)
            t = (raw.STEP, TIME, rid, step, tokens, per_token[0] if per_token else -1, ok, term,
                 row.astype("<i4").tobytes() if with_sets else None, VOCAB, per_token, *draft)
            if level >= Level.FULL or step == 1 or not ok:
                events.append(converter.to_proto(t))
                held.pop(rid, None)
            else:
                held[rid] = t
    summaries = {}
    for rid in sorted(figures):
        if rid in held:
            events.append(converter.to_proto(held.pop(rid)))
        n, total, lo, hi = figures[rid]
        summaries[rid] = pb.Event(so_summary=pb.StructuredOutputSummary(
            allowed_tokens_min=lo, allowed_tokens_max=hi,
            allowed_tokens_mean=total / n if n else -1.0))
    return events, summaries


def columnar_events(engine_steps: list[dict[str, Any]], level: Level, settings: HookSettings
                    ) -> tuple[list[pb.Event], dict[str, pb.Event]]:
    """The columnar path: what the engine thread hands over, converted, then expanded."""
    converter = EventConverter(settings, CapturePolicy(b"k"))
    with_sets = level >= Level.FULL_WITH_ALLOWED_SETS
    backlog = RowsBacklog()
    converted: list[pb.Event] = []
    for engine_step in engine_steps:
        rows = engine_step["rows"]
        backlog.handed += rows.nbytes
        converted += converter.convert((raw.ROWS, 0, "", engine_step["ids"], rows.copy(), None,
                                        VOCAB, engine_step["spec_rows"], with_sets, backlog,
                                        None))
        entries = records((rid, step, tokens, ok, term, *draft) if any(draft) else
                          (rid, step, tokens, ok, term)
                          for rid, step, tokens, ok, term, draft, _, _ in engine_step["accepts"])
        converted += converter.convert((raw.STEPS, TIME, "", entries, int(level), VOCAB))
    summaries = {}
    for rid in sorted({a[0] for s in engine_steps for a in s["accepts"]}):
        summary = (raw.SO_SUMMARY, TIME, rid, "xgrammar", 0, 0, 0, -1, -1, -1.0, False,
                   0, -1, -1, 0, 0, 0, 0, "")
        *held, summaries[rid] = converter.convert(summary)
        converted += held
    assert backlog.waiting() == 0
    assert all(e.HasField("so_steps") for e in converted)
    return [s for e in converted for s in step_columns.expand(e)], summaries


@pytest.mark.parametrize("level", [Level.KEY_EVENTS, Level.FULL, Level.FULL_WITH_ALLOWED_SETS])
@pytest.mark.parametrize("spec", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_columns_expand_to_exactly_the_per_step_events(level: Level, spec: bool,
                                                      seed: int) -> None:
    settings = HookSettings(enabled=True, hmac_key=b"k", level=level)
    engine_steps = scenario(seed, spec)
    expected, expected_summaries = per_step_events(engine_steps, level, settings)
    got, summaries = columnar_events(engine_steps, level, settings)
    assert [e.SerializeToString() for e in got] == [e.SerializeToString() for e in expected]
    if level >= Level.FULL_WITH_ALLOWED_SETS:
        assert any(e.so_step.HasField("allowed_set") for e in got)
    for rid, summary in summaries.items():
        want = expected_summaries[rid].so_summary
        s = summary.so_summary
        assert (s.allowed_tokens_min, s.allowed_tokens_max) == (want.allowed_tokens_min,
                                                                want.allowed_tokens_max)
        assert s.allowed_tokens_mean == pytest.approx(want.allowed_tokens_mean)


def test_columns_that_do_not_line_up_are_refused_whole() -> None:
    event = pb.Event(so_steps=pb.StructuredOutputSteps(
        request_ids=["r"], request_index=[0, 0], step=[1, 2], token_counts=[1, 1],
        tokens=[5], allowed_per_token=[3, 3], accepted=[True, True],
        terminated=[False, False], vocab_size=VOCAB))
    with pytest.raises(step_columns.StepColumnsError):
        step_columns.expand(event)
    event.so_steps.tokens.append(6)
    event.so_steps.request_index[1] = 1  # past the ids
    with pytest.raises(step_columns.StepColumnsError):
        step_columns.expand(event)
    event.so_steps.request_index[1] = 0
    assert [e.so_step.accepted_tokens[0] for e in step_columns.expand(event)] == [5, 6]


class _Grammar:
    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        return True

    def is_terminated(self) -> bool:
        return False

    def fill_bitmask(self, bitmask: Any, index: int) -> None:
        pass


class _Manager:
    """vLLM's StructuredOutputManager as the pool sees it: one tensor in `_grammar_bitmask`,
    refilled every step (here: request i allows tokens 0..step+i), returned as a view."""

    def __init__(self) -> None:
        self._grammar_bitmask = np.zeros((4, (VOCAB + 31) // 32), dtype=np.int32)
        self.step = 0

    def _create_grammar(self, request: Any) -> Any:
        return _Grammar()

    def grammar_bitmask(self, requests: dict[str, Any], ids: list[str],
                        spec: dict[str, list[int]]) -> np.ndarray:
        self.step += 1
        tensor = self._grammar_bitmask
        for i in range(len(ids)):
            bits = np.zeros(tensor.shape[1] * 32, dtype=np.uint8)
            bits[:self.step + i] = 1
            tensor[i] = np.packbits(bits, bitorder="little").view("<i4")
        return tensor[:len(ids)]


def test_the_filled_tensor_itself_goes_to_the_sender_and_comes_back() -> None:
    from types import SimpleNamespace

    from vllm_hooks.runtime import HookRuntime
    from vllm_hooks.vllm.grammar_tap import BitmaskTap
    from vllm_hooks.vllm.structured_output_patch import wrap_structured_output_manager

    settings = HookSettings(enabled=True, hmac_key=b"k", level=Level.FULL_WITH_ALLOWED_SETS)
    rt = HookRuntime(settings, "test")
    manager = _Manager()
    tap = BitmaskTap(rt, VOCAB)
    wrap_structured_output_manager(manager, tap)
    requests = {}
    for rid in ("a", "b"):
        so = SimpleNamespace(structured_output_key=(SimpleNamespace(name="JSON"), "{}"))
        request = SimpleNamespace(request_id=rid, structured_output_request=so,
                                  sampling_params=SimpleNamespace(
                                      structured_outputs=SimpleNamespace(_backend="x")))
        so._grammar = manager._create_grammar(request)
        requests[rid] = request
    converter = EventConverter(settings, CapturePolicy(b"k"))
    events: list[pb.Event] = []
    tensors = []
    for _ in range(6):
        tensors.append(manager._grammar_bitmask)
        bitmask = manager.grammar_bitmask(requests, ["a", "b"], {})
        assert manager._grammar_bitmask is not tensors[-1]  # vLLM fills another next step
        for rid in ("a", "b"):
            requests[rid].structured_output_request._grammar.accept_tokens(rid, [3])
        tap.seal()
        raws = rt.buffer.drain(100)
        (rows_event,) = [r for r in raws if r[0] == raw.ROWS]
        assert np.shares_memory(rows_event[4], bitmask)  # no copy was made
        events += [e for r in raws for e in converter.convert(r)]
    assert tap.pool is not None and tap.pool.allocated <= tap.pool.SLOTS
    assert len({id(t) for t in tensors}) <= 3  # tensors came back into rotation
    assert tap.backlog.waiting() == 0  # nothing was copied
    steps = [e for c in events for e in step_columns.expand(c)]
    assert [(e.request_id, e.so_step.step, e.so_step.allowed_tokens) for e in steps] == [
        (rid, n, n + i) for n in range(1, 7) for i, rid in enumerate(("a", "b"))]
    for rid, i in (("a", 0), ("b", 1)):  # each step's set is its own step's row
        mine = [e.so_step for e in steps if e.request_id == rid]
        earlier = sets.sets_by_step(mine)
        for step in mine:
            decoded = sets.decode(step.allowed_set, VOCAB, earlier, step.step)
            assert decoded == sets.decode(_first_n(step.step + i), VOCAB), (rid, step.step)


def _first_n(n: int) -> pb.AllowedTokenSet:
    return pb.AllowedTokenSet(runs=pb.TokenRuns(lengths=[0, n]))
