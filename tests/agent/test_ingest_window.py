"""The de-duplication window of one (source_id, epoch): no seq value poisons it, memory stays
bounded, and each declared-missing seq is counted once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_audit_agent.ingest.sources import MAX_EPOCHS_PER_SOURCE, SeqWindow, SourceState

UINT64_MAX = (1 << 64) - 1


def test_a_huge_seq_is_held_above_a_hole_and_later_seqs_stay_new() -> None:
    window = SeqWindow(limit=10)
    window.mark(UINT64_MAX)
    for seq in range(1, 1000):
        assert not window.seen(seq), seq
        window.mark(seq)
        assert window.seen(seq)
    assert window.seen(UINT64_MAX) and not window.seen(UINT64_MAX - 1)
    assert window.floor == 999 and window.held == {UINT64_MAX}
    assert window.holes_skipped == 0


def test_past_its_limit_the_window_skips_its_oldest_hole_and_counts_it() -> None:
    window = SeqWindow(limit=4)
    for seq in (3, 5, 7, 9, 11):  # holes at 1-2, 4, 6, 8, 10
        window.mark(seq)
    assert window.holes_skipped == 1
    assert window.floor == 3 and window.held == {5, 7, 9, 11}
    assert window.seen(1) and not window.seen(4)  # the skipped hole is taken as seen


def test_declared_missing_ranges_advance_the_floor_and_count_once() -> None:
    window = SeqWindow()
    window.mark(1)
    window.mark(4)
    assert window.count_missing(2, 5) == 3  # 2, 3, 5 (4 was stored)
    assert window.count_missing(2, 5) == 0
    window.mark(6)
    assert window.floor == 6 and not window.held and not window.missing
    assert window.count_missing(2, 3) == 0  # below the floor: counted before


def test_a_source_remembers_a_bounded_number_of_epochs() -> None:
    source = SourceState()
    for epoch in range(MAX_EPOCHS_PER_SOURCE + 3):
        source.window(epoch).mark(1)
    assert len(source.windows) == MAX_EPOCHS_PER_SOURCE
    assert source.epochs_evicted == 3
    assert 0 not in source.windows and source.window(MAX_EPOCHS_PER_SOURCE + 2).seen(1)


seqs = st.one_of(st.integers(1, 60), st.integers(1, UINT64_MAX))


@settings(max_examples=300, deadline=None)
@given(st.lists(seqs, max_size=80), st.integers(1, 20))
def test_the_window_never_forgets_or_invents_within_its_limit(marks: list[int],
                                                               limit: int) -> None:
    window = SeqWindow(limit=limit)
    stored: set[int] = set()
    for seq in marks:
        window.mark(seq)
        stored.add(seq)
        assert len(window.held) + len(window.missing) <= limit
        for s in stored:
            assert window.seen(s)
    if window.holes_skipped == 0:
        # Nothing given up: exactly the stored seqs are seen.
        for probe in {*marks, *(s + 1 for s in marks), *(s - 1 for s in marks)} - {0}:
            assert window.seen(probe) == (probe in stored)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just(0), st.integers(1, 40)),
                          st.tuples(st.integers(1, 40), st.integers(0, 10))), max_size=40))
def test_each_missing_seq_is_counted_once_and_never_a_stored_one(
        steps: list[tuple[int, int]]) -> None:
    """Against a model of the hook's contract: it never sends a seq it declared missing."""
    window = SeqWindow()
    stored: set[int] = set()
    declared: set[int] = set()
    for a, b in steps:
        if a == 0:  # a batch arrives
            if b not in declared and b not in stored:
                assert not window.seen(b)
                window.mark(b)
                stored.add(b)
        else:  # a gap marker declares [a, a + b] missing
            span = set(range(a, a + b + 1))
            assert window.count_missing(a, a + b) == len(span - stored - declared)
            declared |= span - stored
