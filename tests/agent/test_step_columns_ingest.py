"""The agent reads steps sent as columns (`so_steps`) as the per-step events they stand for:
validation expands them in place, before any rule, so what is stored, applied and replayed
is what a hook of the previous release (per-step `so_step` events, still read) sends."""

from __future__ import annotations

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.model.validation import validate


def per_step(rid: str, step: int, token: int, allowed: int) -> pb.Event:
    return pb.Event(time_unix_nano=5, request_id=rid, so_step=pb.StructuredOutputStep(
        step=step, accepted_tokens=[token], allowed_tokens=allowed, accepted=True,
        vocab_size=100, allowed_per_token=[allowed]))


def batch_of(*events: pb.Event) -> pb.Batch:
    return pb.Batch(source_id="s", seq=1, epoch=1, events=events)


def test_columns_become_the_per_step_events_in_place() -> None:
    lifecycle = pb.Event(time_unix_nano=4, request_id="a", lifecycle=pb.RequestLifecycle(
        phase=pb.LIFECYCLE_PHASE_SCHEDULED))
    columns = pb.Event(time_unix_nano=5, so_steps=pb.StructuredOutputSteps(
        request_ids=["a", "b"], request_index=[0, 1, 0], step=[1, 1, 2], token_counts=[1, 1, 1],
        tokens=[7, 8, 9], allowed_per_token=[40, 41, 42], accepted=[True] * 3,
        terminated=[False] * 3, vocab_size=100))
    summary = pb.Event(time_unix_nano=6, request_id="a", so_summary=pb.StructuredOutputSummary(
        steps=2))
    old = batch_of(lifecycle, per_step("a", 1, 7, 40), per_step("b", 1, 8, 41),
                   per_step("a", 2, 9, 42), summary)
    new = batch_of(lifecycle, columns, summary)
    old_verdict, new_verdict = validate(old, 1 << 20), validate(new, 1 << 20)
    assert not new_verdict.refusal and new_verdict.dropped_events == 0
    assert new.SerializeToString() == old.SerializeToString()
    assert new_verdict.events is not None and old_verdict.events is not None
    assert new_verdict.events.kinds == old_verdict.events.kinds == [
        "lifecycle", "so_step", "so_step", "so_step", "so_summary"]
    assert new_verdict.events.request_ids == ["a", "a", "b", "a", "a"]


def test_columns_that_do_not_line_up_are_dropped_and_counted() -> None:
    broken = pb.Event(so_steps=pb.StructuredOutputSteps(
        request_ids=["a"], request_index=[0, 0], step=[1], token_counts=[1], tokens=[7],
        allowed_per_token=[1], accepted=[True], terminated=[False]))
    kept = per_step("a", 1, 7, 40)
    batch = batch_of(broken, kept)
    verdict = validate(batch, 1 << 20)
    assert not verdict.refusal and verdict.dropped_events == 1
    assert list(batch.events) == [kept]
