"""Allowed-token sets: the hook's encoder (vllm_hooks/allowed_set_encoder.py) against the shared
decoder (vllm_audit/allowed_sets.py) and against an independent pure-Python builder of every
form; the caps, the summary counts and the batch cut."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_audit import allowed_sets as sets
from vllm_audit import step_columns
from vllm_audit.v1 import events_pb2 as pb
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.events import raw_events as raw
from vllm_hooks.events.allowed_set_encoder import AllowedSetRecorder, _varints, encode, row_words
from vllm_hooks.events.capture import CapturePolicy
from vllm_hooks.events.raw_events import EventConverter
from vllm_hooks.transport.truncate import truncate_to_fit


def packed_row(allowed: set[int], vocab: int, padding: bool = False) -> np.ndarray[Any, Any]:
    """The int32 row vLLM fills: bit i of word w allows token 32*w+i. `padding` sets the bits
    past the vocabulary, as vLLM's "allow all" rows (-1) do."""
    bits = np.zeros(((vocab + 31) // 32) * 32, dtype=np.uint8)
    bits[sorted(allowed)] = 1
    if padding:
        bits[vocab:] = 1
    return np.packbits(bits, bitorder="little").view(np.int32)


def every_form(allowed: list[int], vocab: int) -> dict[str, pb.AllowedTokenSet]:
    """Each encoding built independently of the hook's encoder (plain Python over the ids)."""
    def deltas(ids: list[int]) -> list[int]:
        return [b - a for a, b in zip([0, *ids], ids, strict=False)]

    allowed_set = set(allowed)
    disallowed = [t for t in range(vocab) if t not in allowed_set]
    bounds = [t for t in range(vocab) if (t in allowed_set) != (t - 1 in allowed_set)]
    if len(bounds) % 2:
        bounds.append(vocab)
    raw_row = bytearray(sets.bitmask_bytes(vocab))
    for t in allowed:
        raw_row[t >> 3] |= 1 << (t & 7)
    forms = {
        sets.ALLOWED_IDS: pb.AllowedTokenSet(allowed_ids=pb.TokenIdDeltas(deltas=deltas(allowed))),
        sets.DISALLOWED_IDS: pb.AllowedTokenSet(
            disallowed_ids=pb.TokenIdDeltas(deltas=deltas(disallowed))),
        sets.RUNS: pb.AllowedTokenSet(runs=pb.TokenRuns(lengths=deltas(bounds))),
        sets.BITMASK: pb.AllowedTokenSet(bitmask=bytes(raw_row)),
    }
    return forms


def encoded_message(row: np.ndarray[Any, Any], vocab: int) -> tuple[pb.AllowedTokenSet, int]:
    encoding, data = encode(row_words(row, vocab), vocab)
    message = pb.AllowedTokenSet.FromString(data)
    assert sets.encoding_of(message) == encoding
    return message, len(data)


def check_round_trip(allowed: set[int], vocab: int, padding: bool = False) -> pb.AllowedTokenSet:
    message, size = encoded_message(packed_row(allowed, vocab, padding), vocab)
    # The size the encoder compared is the size on the wire.
    assert message.ByteSize() == size
    decoded = sets.decode(message, vocab)
    assert decoded.ids() == sorted(allowed)
    assert len(decoded) == len(allowed)
    assert decoded.bitmask == packed_row(allowed, vocab).tobytes()
    assert all(t in decoded for t in allowed)
    # The smallest form, ties going to the earlier (more readable) one.
    forms = every_form(sorted(allowed), vocab)
    for form in forms.values():
        assert sets.decode(form, vocab).bitmask == decoded.bitmask  # the decoder reads them all
    best = min(forms, key=lambda name: (forms[name].ByteSize(), sets.ENCODINGS.index(name)))
    assert sets.encoding_of(message) == best, {k: v.ByteSize() for k, v in forms.items()}
    assert message == forms[best]
    return message


@st.composite
def masks(draw: st.DrawFn) -> tuple[set[int], int]:
    vocab = draw(st.integers(1, 2100))
    kind = draw(st.sampled_from(["random", "sparse", "dense", "ranges"]))
    if kind == "random":
        density = draw(st.floats(0, 1))
        seed = draw(st.integers(0, 2**32 - 1))
        bits = np.random.default_rng(seed).random(vocab) < density
        return set(np.flatnonzero(bits).tolist()), vocab
    ids = st.integers(0, vocab - 1)
    if kind == "sparse":
        return draw(st.sets(ids, max_size=40)), vocab
    if kind == "dense":
        return set(range(vocab)) - draw(st.sets(ids, max_size=40)), vocab
    allowed: set[int] = set()
    for start, length in draw(st.lists(st.tuples(ids, st.integers(1, 300)), max_size=12)):
        allowed.update(range(start, min(vocab, start + length)))
    return allowed, vocab


@settings(max_examples=300, deadline=None)
@given(masks(), st.booleans())
def test_any_row_round_trips_through_its_smallest_encoding(
        mask: tuple[set[int], int], padding: bool) -> None:
    allowed, vocab = mask
    check_round_trip(allowed, vocab, padding)


@pytest.mark.parametrize("vocab", [1, 31, 32, 33, 63, 64, 65, 1000, 1024, 128_256])
def test_edge_rows(vocab: int) -> None:
    empty = check_round_trip(set(), vocab)
    assert empty == pb.AllowedTokenSet(allowed_ids=pb.TokenIdDeltas())  # 2 bytes
    full = check_round_trip(set(range(vocab)), vocab)
    assert full == pb.AllowedTokenSet(disallowed_ids=pb.TokenIdDeltas())
    # vLLM's "allow all" row is -1 in every word, padding bits included.
    assert check_round_trip(set(range(vocab)), vocab, padding=True) == full
    check_round_trip({0}, vocab)
    check_round_trip({vocab - 1}, vocab)
    check_round_trip(set(range(vocab // 2, vocab)), vocab)  # a run up to the last token


def test_forms_chosen_at_a_128k_vocabulary() -> None:
    vocab = 128_256
    rng = np.random.default_rng(7)
    few = set(rng.choice(vocab, 50, replace=False).tolist())
    assert sets.encoding_of(check_round_trip(few, vocab)) == sets.ALLOWED_IDS
    most = set(range(vocab)) - set(rng.choice(vocab, 3000, replace=False).tolist())
    assert sets.encoding_of(check_round_trip(most, vocab)) == sets.DISALLOWED_IDS
    ranges = {t for s in range(0, vocab, 4000) for t in range(s, min(s + 900, vocab))}
    message = check_round_trip(ranges, vocab)
    assert sets.encoding_of(message) == sets.RUNS and message.ByteSize() < 200
    dense = set(np.flatnonzero(rng.random(vocab) < 0.5).tolist())
    message = check_round_trip(dense, vocab)
    assert sets.encoding_of(message) == sets.BITMASK
    assert message.ByteSize() == sets.wire_size(sets.BITMASK, sets.bitmask_bytes(vocab))


@pytest.mark.parametrize("payload", [0, 1, 127, 128, 16_383, 16_384, 40_000])
def test_wire_size_and_frame_are_the_serialised_message(payload: int) -> None:
    raw_row = pb.AllowedTokenSet(bitmask=b"\x01" * payload)
    assert raw_row.ByteSize() == sets.wire_size(sets.BITMASK, payload)
    assert sets.frame(sets.BITMASK, b"\x01" * payload) == raw_row.SerializeToString()
    ids = pb.AllowedTokenSet(allowed_ids=pb.TokenIdDeltas(deltas=[1] * payload))
    assert ids.ByteSize() == sets.wire_size(sets.ALLOWED_IDS, payload)
    if payload == 0:
        ids.allowed_ids.SetInParent()  # the empty set is present, not unset
    assert sets.frame(sets.ALLOWED_IDS, b"\x01" * payload) == ids.SerializeToString()
    runs = pb.AllowedTokenSet(runs=pb.TokenRuns(lengths=[1] * payload))
    assert len(sets.frame(sets.RUNS, b"\x01" * payload)) == sets.wire_size(sets.RUNS, payload)
    assert sets.frame(sets.RUNS, b"\x01" * payload) == (
        runs.SerializeToString() if payload else b"\x1a\x00")


@pytest.mark.parametrize(("message", "vocab", "problem"), [
    (pb.AllowedTokenSet(), 10, "no encoding"),
    (pb.AllowedTokenSet(allowed_ids=pb.TokenIdDeltas(deltas=[3, 7])), 10, "reach id 10"),
    (pb.AllowedTokenSet(allowed_ids=pb.TokenIdDeltas(deltas=[3, 0])), 10, "strictly ascending"),
    (pb.AllowedTokenSet(disallowed_ids=pb.TokenIdDeltas(deltas=[12])), 10, "reach id 12"),
    (pb.AllowedTokenSet(runs=pb.TokenRuns(lengths=[4, 7])), 10, "cover 11 tokens"),
    (pb.AllowedTokenSet(runs=pb.TokenRuns(lengths=[0, 2, 0, 1])), 10, "length 0"),
    (pb.AllowedTokenSet(bitmask=b"\x00" * 5), 10, "needs 4"),
    (pb.AllowedTokenSet(bitmask=b"\x00\x04\x00\x00"), 10, "past vocab_size"),
    (pb.AllowedTokenSet(allowed_ids=pb.TokenIdDeltas()), 0, "no token space"),
])
def test_invalid_encodings_are_refused_saying_why(message: pb.AllowedTokenSet, vocab: int,
                                                  problem: str) -> None:
    assert problem in sets.check(message, vocab)
    with pytest.raises(sets.AllowedSetError, match=problem):
        sets.decode(message, vocab)


def test_decoded_set_answers_membership_and_ranges() -> None:
    decoded = sets.decode(pb.AllowedTokenSet(runs=pb.TokenRuns(lengths=[0, 3, 5, 2])), 40)
    assert decoded.ranges() == [(0, 3), (8, 10)]
    assert 9 in decoded and 3 not in decoded and 40 not in decoded and -1 not in decoded
    assert len(decoded) == 5


def step_tuple(request_id: str, step: int, row: bytes | None, vocab: int) -> tuple[Any, ...]:
    return (raw.STEP, 1, request_id, step, [5], 7, True, False, row, vocab, [7], 0, 0, 0)


def summary_tuple(request_id: str) -> tuple[Any, ...]:
    return (raw.SO_SUMMARY, 2, request_id, "xgrammar", 3, 3, 0, 1, 9, 4.0, True, 0, -1, -1,
            0, 0, 0, 0, "")


def test_caps_drop_a_set_mark_the_step_and_count_it_in_the_summary() -> None:
    vocab = 4096  # a raw row is 512 bytes
    rng = np.random.default_rng(3)
    dense = packed_row(set(np.flatnonzero(rng.random(vocab) < 0.5).tolist()), vocab).tobytes()
    a, b, c = (packed_row({k, k + 7, k + 900}, vocab).tobytes() for k in (1, 2, 3))
    size = len(encode(row_words(np.frombuffer(a, np.int32), vocab), vocab)[1])
    settings = HookSettings(enabled=True, allowed_set_max_bytes=300,
                            allowed_sets_trail_max_bytes=2 * size)
    convert = EventConverter(settings, CapturePolicy(b"k")).to_proto
    steps = [convert(step_tuple("r", 1, a, vocab)), convert(step_tuple("r", 2, dense, vocab)),
             convert(step_tuple("r", 3, b, vocab)), convert(step_tuple("r", 4, c, vocab)),
             convert(step_tuple("other", 1, c, vocab))]
    kept = [s.so_step.HasField("allowed_set") for s in steps]
    truncated = [s.so_step.allowed_set_truncated for s in steps]
    # Step 2 is over the step cap; step 4 would take request r past its trail cap; another
    # request has a cap of its own.
    assert kept == [True, False, True, False, True]
    assert truncated == [not k for k in kept]
    assert sets.decode(steps[0].so_step.allowed_set, vocab).ids() == [1, 8, 901]
    summary = convert(summary_tuple("r")).so_summary
    assert (summary.allowed_sets_over_step_cap, summary.allowed_sets_over_trail_cap,
            summary.allowed_set_bytes) == (1, 1, 2 * size)
    # The request's tally left with its summary; a step without a row is not a drop.
    assert convert(summary_tuple("r")).so_summary.allowed_set_bytes == 0
    plain = convert(step_tuple("r", 5, None, vocab)).so_step
    assert not plain.HasField("allowed_set") and not plain.allowed_set_truncated


def test_a_repeated_set_refers_to_the_step_that_holds_it() -> None:
    vocab = 1000
    inside_string = packed_row(set(range(vocab)) - {34, 92, 500}, vocab).tobytes()
    key = packed_row({34}, vocab).tobytes()
    convert = EventConverter(HookSettings(enabled=True), CapturePolicy(b"k")).to_proto
    rows = [key, inside_string, inside_string, key, inside_string]
    steps = [convert(step_tuple("r", n, row, vocab)).so_step for n, row in enumerate(rows, 1)]
    assert [sets.encoding_of(s.allowed_set) for s in steps] == [
        sets.ALLOWED_IDS, sets.DISALLOWED_IDS, sets.SAME_AS_STEP, sets.SAME_AS_STEP,
        sets.SAME_AS_STEP]
    assert [s.allowed_set.same_as_step for s in steps[2:]] == [2, 1, 2]
    assert steps[3].allowed_set.ByteSize() == 2 < steps[0].allowed_set.ByteSize() == 5
    earlier = sets.sets_by_step(steps)
    for step, row in zip(steps, rows, strict=True):
        assert sets.decode(step.allowed_set, vocab, earlier, step.step).bitmask == row
    summary = convert(summary_tuple("r")).so_summary
    assert summary.allowed_set_bytes == sum(s.allowed_set.ByteSize() for s in steps)
    # Another request refers only to its own steps.
    first = convert(step_tuple("q", 1, inside_string, vocab)).so_step
    assert sets.encoding_of(first.allowed_set) == sets.DISALLOWED_IDS


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=30), st.integers(1, 700))
def test_any_sequence_of_steps_decodes_back_through_its_references(
        picks: list[int], vocab: int) -> None:
    rng = np.random.default_rng(vocab)
    pool = [packed_row(set(np.flatnonzero(rng.random(vocab) < p).tolist()), vocab).tobytes()
            for p in (0.0, 0.01, 0.5, 0.99, 1.0)]
    convert = EventConverter(HookSettings(enabled=True), CapturePolicy(b"k")).to_proto
    steps = [convert(step_tuple("r", n, pool[k], vocab)).so_step
             for n, k in enumerate(picks, 1)]
    earlier = sets.sets_by_step(steps)
    for step, k in zip(steps, picks, strict=True):
        assert sets.check(step.allowed_set, vocab, step.step) == ""
        assert sets.decode(step.allowed_set, vocab, earlier, step.step).bitmask == pool[k]
        if sets.encoding_of(step.allowed_set) == sets.SAME_AS_STEP:
            target = earlier[step.allowed_set.same_as_step]
            assert sets.encoding_of(target) in sets.ENCODINGS


def test_references_that_cannot_be_resolved_are_errors() -> None:
    ref = pb.AllowedTokenSet(same_as_step=3)
    with pytest.raises(sets.AllowedSetError, match="the trail has no set at step 3"):
        sets.decode(ref, 10, {}, 5)
    with pytest.raises(sets.AllowedSetError, match="step 3 is itself a reference"):
        sets.decode(ref, 10, {3: pb.AllowedTokenSet(same_as_step=1)}, 5)
    assert "not an earlier step" in sets.check(ref, 10, 3)
    assert "not an earlier step" in sets.check(pb.AllowedTokenSet(same_as_step=0), 10)
    assert sets.check(ref, 10, 4) == ""
    resolved = sets.decode(ref, 10, {3: pb.AllowedTokenSet(runs=pb.TokenRuns(lengths=[2, 3]))})
    assert resolved.ids() == [2, 3, 4]


def test_the_step_cap_stays_under_a_quarter_of_the_batch_cap() -> None:
    settings = HookSettings(enabled=True, max_batch_bytes=8192, allowed_set_max_bytes=100_000)
    assert settings.allowed_set_step_cap() == 2048


def test_repeated_rows_are_encoded_once() -> None:
    recorder = AllowedSetRecorder(4096, 1 << 20)
    row = packed_row({4, 9}, 1024).tobytes()
    first = recorder.encoded(row, 1024)
    assert recorder.encoded(bytes(row), 1024) is first and recorder.cache_hits == 1
    assert recorder.encoded(row, 2048) is not first  # the vocabulary is part of the key


def test_a_step_over_the_batch_room_loses_its_set_and_keeps_its_tokens() -> None:
    step = pb.StructuredOutputStep(step=3, accepted_tokens=[1, 2, 3], vocab_size=320_000,
                                   allowed_set=pb.AllowedTokenSet(bitmask=b"\x01" * 40_000))
    event = pb.Event(request_id="r", so_step=step)
    assert truncate_to_fit(event, 1000)
    assert event.truncated and event.so_step.allowed_set_truncated
    assert list(event.so_step.accepted_tokens) == [1, 2, 3]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), max_size=50))
def test_numpy_varints_are_protobufs_packing(values: list[int]) -> None:
    packed = pb.TokenRuns(lengths=values).SerializeToString()
    assert sets.frame(sets.RUNS, _varints(np.array(values, dtype=np.int64))) == (
        pb.AllowedTokenSet(runs=pb.TokenRuns(lengths=values)).SerializeToString())
    assert packed.endswith(_varints(np.array(values, dtype=np.int64)))


def test_the_caps_are_hook_settings_with_defaults_and_clear_errors() -> None:
    from vllm_hooks.config.env_vars import (
        ENV_ALLOWED_SET_MAX_BYTES,
        ENV_ALLOWED_SETS_BACKLOG_BYTES,
        ENV_ALLOWED_SETS_TRAIL_MAX_BYTES,
    )

    default = HookSettings.from_env({})
    assert (default.allowed_set_max_bytes, default.allowed_sets_trail_max_bytes,
            default.allowed_sets_backlog_bytes) == (12 * 1024, 1 << 20, 64 << 20)
    assert HookSettings.from_env(
        {ENV_ALLOWED_SETS_BACKLOG_BYTES: "1000"}).allowed_sets_backlog_bytes == 1000
    # The default step cap refuses the raw row of a 128k vocabulary.
    assert default.allowed_set_step_cap() < sets.wire_size(sets.BITMASK,
                                                           sets.bitmask_bytes(128_256))
    set_ = HookSettings.from_env({ENV_ALLOWED_SET_MAX_BYTES: "2048",
                                  ENV_ALLOWED_SETS_TRAIL_MAX_BYTES: "65536"})
    assert (set_.allowed_set_max_bytes, set_.allowed_sets_trail_max_bytes) == (2048, 65536)
    with pytest.raises(ValueError, match=ENV_ALLOWED_SET_MAX_BYTES):
        HookSettings.from_env({ENV_ALLOWED_SET_MAX_BYTES: "lots"})
    with pytest.raises(ValueError, match=ENV_ALLOWED_SETS_TRAIL_MAX_BYTES):
        HookSettings.from_env({ENV_ALLOWED_SETS_TRAIL_MAX_BYTES: "0"})


class _Grammar:
    """Stands in for a backend grammar (the proxy only delegates to it)."""

    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        return True

    def is_terminated(self) -> bool:
        return False


def test_a_backlog_of_rows_sheds_sets_not_steps_and_counts_them() -> None:
    from vllm_hooks.config.levels import Level
    from vllm_hooks.runtime import HookRuntime
    from vllm_hooks.vllm.grammar_tap import AuditedGrammar, BitmaskTap

    vocab = 1024  # 128 bytes a row (one row a step): the cap below holds 4 steps' copies
    settings = HookSettings(enabled=True, hmac_key=b"k", level=Level.FULL_WITH_ALLOWED_SETS,
                            allowed_sets_backlog_bytes=4 * 128)
    rt = HookRuntime(settings, "test")
    tap = BitmaskTap(rt, vocab)
    grammar = AuditedGrammar(_Grammar(), "r", tap, "xgrammar")
    bitmask = np.stack([packed_row({7, 9}, vocab)])
    for _ in range(6):  # no sender takes the copies: the 5th and 6th steps find 4 waiting
        tap.snapshot(bitmask, ["r"], None)
        grammar.accept_tokens("r", [7])
    grammar.finish("FINISHED_STOPPED")
    raws = rt.buffer.drain(100)
    copies = [r[4] for r in raws if r[0] == raw.ROWS]
    assert [c is not None for c in copies] == [True] * 4 + [False] * 2
    converter = EventConverter(settings, CapturePolicy(b"k"))
    events = [e for r in raws for e in converter.convert(r)]
    steps = [s.so_step for e in events if e.WhichOneof("body") == "so_steps"
             for s in step_columns.expand(e)]
    assert [s.step for s in steps] == [1, 2, 3, 4, 5, 6]
    assert all(s.allowed_tokens == 2 for s in steps)  # every step is whole, counted
    assert [s.HasField("allowed_set") for s in steps] == [True] * 4 + [False] * 2
    assert [s.allowed_set_truncated for s in steps] == [False] * 4 + [True] * 2
    summary = events[-1].so_summary
    assert (summary.allowed_sets_over_backlog, summary.steps) == (2, 6)
    assert tap.backlog.waiting() == 0  # the sender took the copies it converted
    # With the backlog taken, rows are copied again.
    tap.snapshot(bitmask, ["r"], None)
    assert rt.buffer.drain(1)[0][4] is not None
