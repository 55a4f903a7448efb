"""Which records to send again when a broker gives an offset it had given before."""

from __future__ import annotations

from typing import NamedTuple

from vllm_audit_agent.delivery.ack_check import AckedOffsets


class Meta(NamedTuple):
    topic: str
    partition: int
    offset: int


def test_increasing_offsets_and_a_batch_settled_in_runs_are_no_loss() -> None:
    acked = AckedOffsets()
    assert acked.note(Meta("t", 0, 0), 3) is None
    assert acked.note(Meta("t", 0, 0), 5) is None  # the same batch, its later run of records
    assert acked.note(Meta("t", 1, 0), 4) is None  # another partition has its own offsets
    assert acked.note(Meta("t", 0, 3), 9) is None


def test_an_offset_given_again_sends_again_after_the_last_batch_still_there() -> None:
    acked = AckedOffsets()
    for offset, seq in ((0, 2), (3, 6), (7, 10), (12, 15)):
        assert acked.note(Meta("t", 0, offset), seq) is None
    # The broker truncated to offset 7: batches at 7 and 12 are gone, the one at 3 is not.
    assert acked.note(Meta("t", 0, 7), 20) == 6
    assert acked.note(Meta("t", 0, 9), 22) is None  # and it goes on from there
    # Restarted empty: everything, from the start of the record log.
    assert acked.note(Meta("t", 0, 0), 30) == 0


def test_the_memory_is_bounded_and_a_loss_past_it_sends_everything_again() -> None:
    acked = AckedOffsets(max_marks=3)
    for i in range(10):
        acked.note(Meta("t", 0, 10 * i), i)
    assert acked.note(Meta("t", 0, 5), 99) == 0  # what was kept starts above offset 5
    assert acked.note(object(), 1) is None  # a sink without offsets
