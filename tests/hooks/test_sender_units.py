"""The sender's pure parts: settings validation, refusal names, batch sizing and truncation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.agent_harness import agent, query
from tests.support.sender_harness import running_sender
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, query_pb2
from vllm_hooks.config.env_vars import (
    ENV_ACK_TIMEOUT_MS,
    ENV_MAX_BATCH_BYTES,
    ENV_MAX_MESSAGE_BYTES,
)
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.errors import InternalErrors
from vllm_hooks.events import raw_events as raw
from vllm_hooks.events.capture import CapturePolicy
from vllm_hooks.events.raw_events import EventConverter
from vllm_hooks.transport.batching import BatchFiller, framed_size
from vllm_hooks.transport.buffer import EventBuffer
from vllm_hooks.transport.refusals import PERMANENT_DROP_REASONS, drop_reason, is_permanent
from vllm_hooks.transport.sender import new_epoch
from vllm_hooks.transport.sender_stats import SenderStats
from vllm_hooks.transport.truncate import truncate_to_fit


def test_new_settings_have_defaults_and_read_the_environment() -> None:
    default = HookSettings.from_env({})
    assert (default.max_batch_bytes, default.max_message_bytes, default.ack_timeout_ms) == (
        1 << 20, 8 << 20, 10_000)
    s = HookSettings.from_env({ENV_MAX_BATCH_BYTES: "65536", ENV_MAX_MESSAGE_BYTES: "131072",
                               ENV_ACK_TIMEOUT_MS: "2500"})
    assert (s.max_batch_bytes, s.max_message_bytes, s.ack_timeout_ms) == (65536, 131072, 2500)


@pytest.mark.parametrize(("env", "named"), [
    ({ENV_MAX_BATCH_BYTES: "lots"}, ENV_MAX_BATCH_BYTES),
    ({ENV_MAX_BATCH_BYTES: "1000"}, ENV_MAX_BATCH_BYTES),
    ({ENV_MAX_MESSAGE_BYTES: "0"}, ENV_MAX_MESSAGE_BYTES),
    ({ENV_MAX_MESSAGE_BYTES: str(1 << 31)}, ENV_MAX_MESSAGE_BYTES),
    ({ENV_MAX_BATCH_BYTES: "8388608"}, ENV_MAX_MESSAGE_BYTES),  # not above the batch cap
    ({ENV_ACK_TIMEOUT_MS: "-5"}, ENV_ACK_TIMEOUT_MS),
])
def test_bad_values_are_refused_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        HookSettings.from_env(env)


def test_refusal_names_derive_from_the_proto_enum() -> None:
    assert PERMANENT_DROP_REASONS == ("refused_invalid", "refused_too_big")
    assert drop_reason(ingest_pb2.REFUSAL_REASON_WAL_FULL) == "refused_wal_full"
    assert drop_reason(99) == "refused_99"  # a newer agent's reason still gets a name
    assert not is_permanent(ingest_pb2.REFUSAL_REASON_DISK_FULL)
    assert not is_permanent(99)
    assert is_permanent(ingest_pb2.REFUSAL_REASON_TOO_BIG)
    assert SenderStats().events_refused == {"refused_invalid": 0, "refused_too_big": 0}


def test_epochs_are_non_zero_63_bit_and_differ() -> None:
    epochs = {new_epoch() for _ in range(100)}
    assert len(epochs) == 100
    assert all(0 < e < 2**63 for e in epochs)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 3_000_000])
def test_framed_size_is_what_an_event_adds_to_a_batch(size: int) -> None:
    event = pb.Event(so_step=pb.StructuredOutputStep(
        allowed_set=pb.AllowedTokenSet(bitmask=b"x" * size)))
    batch = pb.Batch(source_id="s", seq=1)
    before = batch.ByteSize()
    batch.events.append(event)
    assert batch.ByteSize() - before == framed_size(event.ByteSize())


def test_a_step_is_cut_to_fit_dropping_its_whole_allowed_set_then_keeping_the_first_tokens(
) -> None:
    tokens = list(range(100_000, 160_000))
    step = pb.StructuredOutputStep(step=7, accepted_tokens=tokens,
                                   allowed_set=pb.AllowedTokenSet(bitmask=b"\xff" * 40_000),
                                   vocab_size=320_000)
    event = pb.Event(request_id="r", so_step=step)
    assert truncate_to_fit(event, 20_000)
    assert event.truncated
    assert event.ByteSize() <= 20_000
    # Part of a set would be a wrong set: it goes whole, and the step says so.
    assert not event.so_step.HasField("allowed_set")
    assert event.so_step.allowed_set_truncated
    kept = list(event.so_step.accepted_tokens)
    assert kept == tokens[:len(kept)]
    assert (event.request_id, event.so_step.step, event.so_step.vocab_size) == ("r", 7, 320_000)


def test_strings_are_cut_on_character_boundaries() -> None:
    event = pb.Event(request_id="r", http=pb.HttpRequest(prompt="\u20ac" * 10_000,
                                                         output="o" * 100))
    assert truncate_to_fit(event, 5_000)
    assert event.ByteSize() <= 5_000
    assert set(event.http.prompt) == {"\u20ac"}
    assert event.http.output == "o" * 100  # the smaller field is left alone


def test_an_event_with_nothing_to_cut_does_not_fit() -> None:
    event = pb.Event(request_id="r" * 10_000, lifecycle=pb.RequestLifecycle(phase=5))
    assert not truncate_to_fit(event, 1_000)


def test_the_filler_cuts_by_bytes_keeps_order_and_counts_what_it_cannot_send() -> None:
    settings = HookSettings(capture_prompt="full", max_batch_bytes=8192, max_message_bytes=16384)
    buffer = EventBuffer(100)
    errors = InternalErrors()
    filler = BatchFiller(buffer, EventConverter(settings, CapturePolicy(b"k")), errors,
                         max_events=100, max_bytes=settings.max_batch_bytes)
    for i in range(6):
        buffer.offer((raw.HTTP, 1, f"r{i}", {"prompt": "p" * 3000}))
    buffer.offer((raw.HTTP, 1, "huge", {"prompt": "p" * 50_000}))
    buffer.offer((raw.LIFECYCLE, 1, "x" * 20_000, raw.FINISHED, 0, 0, "", "", 0, False))  # uncuttable
    buffer.offer((99, 1, "bad"))  # unknown kind: a conversion error
    buffer.offer((raw.HTTP, 1, "last", {"prompt": "p"}))
    batches = []
    while filler.waiting():
        batch = pb.Batch(source_id="s", seq=len(batches) + 1)
        size = filler.fill(batch)
        assert size == batch.ByteSize() <= settings.max_batch_bytes
        batches.append(batch)
    ids = [e.request_id for b in batches for e in b.events]
    assert ids == ["r0", "r1", "r2", "r3", "r4", "r5", "huge", "last"]
    assert [len(b.events) for b in batches][:3] == [2, 2, 2]
    assert [e.truncated for b in batches for e in b.events].count(True) == 1
    assert filler.events_truncated == 1
    drops: dict[str, int] = {}
    for b in batches:
        for reason, n in b.gap.dropped_by_reason.items():
            drops[reason] = drops.get(reason, 0) + n
    assert drops == {"event_too_big": 1, "convert_error": 1}
    assert errors.snapshot() == {"sender.convert": 1}


async def test_a_custom_event_reaches_its_trail_through_the_real_agent(tmp_path: Path) -> None:
    """record_custom_event's raw tuple, through the real sender and agent, into the trail."""
    rid = "0-1a2b3c4d"
    async with agent(tmp_path) as (handle, _):
        with running_sender(tmp_path / "ingest.sock") as (sender, buffer):
            buffer.offer((raw.CUSTOM, 10**18, rid, "policy_check", {"verdict": "allow"}))
            buffer.offer((raw.LIFECYCLE, 10**18 + 1, rid, raw.FINISHED, 3, 5, "stop", "FINISHED_STOPPED",
                          16, False))
            assert await asyncio.to_thread(sender.flush, 15.0)
        trail = await query(handle).GetTrail(query_pb2.GetTrailRequest(request_id=rid,
                                                                       include_events=True))
        (custom,) = [e.custom for e in trail.events if e.WhichOneof("body") == "custom"]
        assert (custom.name, dict(custom.attributes)) == ("policy_check", {"verdict": "allow"})
