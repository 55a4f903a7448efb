"""Allowed-token sets in the JSON the CLI prints (`query get ID --events`) and `vllm-audit
replay` reads back: every form, the empty set included, survives the round trip."""

from __future__ import annotations

import orjson
import pytest

from vllm_audit import allowed_sets
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.cli.output import dumps
from vllm_audit_agent.model.record import message_to_dict
from vllm_audit_agent.records.replay import _event_from_dict

SETS = [
    pb.AllowedTokenSet(allowed_ids=pb.TokenIdDeltas()),  # the empty set
    pb.AllowedTokenSet(disallowed_ids=pb.TokenIdDeltas()),  # every token
    pb.AllowedTokenSet(allowed_ids=pb.TokenIdDeltas(deltas=[3, 1, 40])),
    pb.AllowedTokenSet(runs=pb.TokenRuns(lengths=[0, 5, 9, 2])),
    pb.AllowedTokenSet(bitmask=bytes([0b1010_0101, 0, 0xFF, 0x0F, 1, 0, 0, 0])),
    pb.AllowedTokenSet(same_as_step=1),
]


@pytest.mark.parametrize("token_set", SETS, ids=allowed_sets.encoding_of)
def test_a_step_with_its_set_round_trips_through_the_printed_json(
        token_set: pb.AllowedTokenSet) -> None:
    event = pb.Event(time_unix_nano=10**15, request_id="r-1", so_step=pb.StructuredOutputStep(
        step=2, accepted_tokens=[4], vocab_size=60, allowed_set=token_set))
    printed = orjson.loads(dumps(message_to_dict(event)))
    # Only the member that is set is listed: an empty one is a value, not a default.
    assert list(printed["so_step"]["allowed_set"]) == [allowed_sets.encoding_of(token_set)]
    assert "lifecycle" not in printed and "so_step" in printed
    back = _event_from_dict(printed)
    assert back == event
    earlier = {1: SETS[2]}
    assert (allowed_sets.decode(back.so_step.allowed_set, 60, earlier, 2)
            == allowed_sets.decode(token_set, 60, earlier, 2))
