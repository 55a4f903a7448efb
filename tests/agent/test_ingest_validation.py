"""Validation rules at ingest (agent/vllm_audit_agent/validation.py): what is refused, what is repaired."""

from __future__ import annotations

import math

import pytest

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.model.validation import (
    CLAMPABLE_FIELDS,
    MAX_DURATION_MS,
    MAX_STRING_BYTES,
    UINT64_MAX,
    saturating_add,
    validate,
)

CAP = 1 << 20


def batch(*events: pb.Event, **kw: object) -> pb.Batch:
    return pb.Batch(source_id="s", seq=1, events=events, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "expected"), [
    (math.inf, MAX_DURATION_MS), (-math.inf, 0.0), (math.nan, 0.0), (1e300, MAX_DURATION_MS),
    (-1.0, 0.0), (12.5, 12.5)])
def test_durations_are_clamped_into_range(value: float, expected: float) -> None:
    b = batch(pb.Event(request_id="r", http=pb.HttpRequest(latency_ms=value)))
    verdict = validate(b, CAP)
    assert not verdict.refusal
    assert b.events[0].http.latency_ms == expected
    changed = expected != value or math.isnan(value)
    assert verdict.clamped["HttpRequest.latency_ms"] == int(changed)
    assert b.events[0].truncated == changed


def test_counts_ratios_times_and_status_are_repaired() -> None:
    b = batch(pb.Event(time_unix_nano=-1, engine_stats=pb.EngineStats(
                  kv_cache_usage=math.nan, prompt_tokens=-9)),
              pb.Event(request_id="r", lifecycle=pb.RequestLifecycle(num_output_tokens=-1)),
              pb.Event(request_id="r", http=pb.HttpRequest(status_code=-200)))
    verdict = validate(b, CAP)
    assert dict(+verdict.clamped) == {
        "Event.time_unix_nano": 1, "EngineStats.kv_cache_usage": 1,
        "EngineStats.prompt_tokens": 1, "RequestLifecycle.num_output_tokens": 1,
        "HttpRequest.status_code": 1}
    assert b.events[0].time_unix_nano == 0 and b.events[0].engine_stats.kv_cache_usage == 0
    assert b.events[2].http.status_code == 0
    assert set(verdict.clamped) <= set(CLAMPABLE_FIELDS)


def test_oversize_strings_are_cut_at_a_character_boundary() -> None:
    b = batch(pb.Event(request_id="r", http=pb.HttpRequest(path="é" * MAX_STRING_BYTES,
                                                          prompt="p" * 10_000)))
    verdict = validate(b, CAP)
    path = b.events[0].http.path
    assert len(path.encode()) <= MAX_STRING_BYTES and set(path) == {"é"}
    assert b.events[0].http.prompt == "p" * 10_000  # long text has the larger cap
    assert dict(+verdict.clamped) == {"HttpRequest.path": 1}


def test_events_without_a_body_are_dropped_and_the_rest_kept() -> None:
    b = batch(pb.Event(request_id="x"), pb.Event(request_id="r", lifecycle=pb.RequestLifecycle()))
    verdict = validate(b, CAP)
    assert not verdict.refusal and verdict.dropped_events == 1
    assert [e.request_id for e in b.events] == ["r"]


def test_gap_counts_up_to_uint64_max_are_accepted_and_saturate() -> None:
    b = batch(gap=pb.GapMarker(dropped_by_reason={"buffer_full": UINT64_MAX}))
    assert not validate(b, CAP).refusal
    from collections import Counter

    counter: Counter[str] = Counter()
    saturating_add(counter, "buffer_full", UINT64_MAX)
    saturating_add(counter, "buffer_full", UINT64_MAX)
    assert counter["buffer_full"] == UINT64_MAX


def test_too_many_gap_reasons_are_refused() -> None:
    b = batch(gap=pb.GapMarker(dropped_by_reason={f"r{i}": 1 for i in range(65)}))
    verdict = validate(b, CAP)
    assert verdict.refusal == "invalid" and "65 reasons" in verdict.detail


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e300, -2.0])
def test_every_float_of_every_body_is_clamped_engine_sums_included(value: float) -> None:
    """A NaN in an engine-stats sum once reached a record (its engine snapshot) and failed
    the record log's canonical encoding: the float rules now come from the contract."""
    stats = pb.EngineStats(ttft_seconds_sum=value, decode_time_seconds_sum=value)
    b = batch(pb.Event(engine_stats=stats))
    verdict = validate(b, CAP)
    assert not verdict.refusal
    kept = b.events[0].engine_stats
    for field in ("ttft_seconds_sum", "decode_time_seconds_sum"):
        assert math.isfinite(getattr(kept, field)) and 0 <= getattr(kept, field) <= MAX_DURATION_MS
        assert verdict.clamped[f"EngineStats.{field}"] == 1
        assert f"EngineStats.{field}" in CLAMPABLE_FIELDS


def test_an_allowed_set_that_is_not_a_valid_encoding_is_removed_and_counted() -> None:
    valid = pb.AllowedTokenSet(allowed_ids=pb.TokenIdDeltas(deltas=[2, 5]))
    beyond = pb.AllowedTokenSet(allowed_ids=pb.TokenIdDeltas(deltas=[2, 50]))
    b = batch(pb.Event(request_id="r", so_step=pb.StructuredOutputStep(
                  step=1, vocab_size=32, allowed_set=valid)),
              pb.Event(request_id="r", so_step=pb.StructuredOutputStep(
                  step=2, vocab_size=32, allowed_set=beyond)))
    verdict = validate(b, CAP)
    assert not verdict.refusal
    assert dict(+verdict.clamped) == {"StructuredOutputStep.allowed_set": 1}
    assert "StructuredOutputStep.allowed_set" in CLAMPABLE_FIELDS
    kept, removed = b.events[0], b.events[1]
    assert kept.so_step.allowed_set == valid and not kept.truncated
    assert not removed.so_step.HasField("allowed_set")
    assert removed.so_step.allowed_set_truncated and removed.truncated
