"""Offline `LLM` with JSON-schema structured output, hook at full-with-allowed-sets."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from harness.kafka_broker import KafkaBroker
from tests.e2e.conftest import Agent
from tests.e2e.helpers import wait_for_offline_trail, wait_for_trail
from tests.e2e.structured import forbidden_token, replay_in_tests
from vllm_audit import allowed_sets
from vllm_audit.v1 import query_pb2
from vllm_audit_agent.model.record import SCHEMA_VERSION

RECORD_SCHEMA = Path(__file__).resolve().parents[2] / "schema" / "trail-record.schema.json"

pytestmark = pytest.mark.vllm

VOCAB_SIZE = 1024  # harness/tiny_model.py


def independent_popcount(bitmask: bytes, vocab_size: int) -> tuple[int, set[int]]:
    """Counts allowed tokens bit by bit with np.unpackbits (not the hook's bitwise_count)."""
    bits = np.unpackbits(np.frombuffer(bitmask, dtype=np.uint8), bitorder="little")[:vocab_size]
    allowed = set(np.flatnonzero(bits).tolist())
    return len(allowed), allowed


def offline_trails(offline: list[dict[str, Any]], agent: Agent
                   ) -> list[tuple[dict[str, Any], query_pb2.GetTrailResponse]]:
    out = []
    for result in offline:
        summary = wait_for_offline_trail(agent.query, str(result["request_id"]))
        out.append((result, wait_for_trail(agent.query, summary.request_id, lambda t: True)))
    return out


def test_each_request_has_a_structured_output_trail(
    offline_enabled: list[dict[str, Any]], agent: Agent
) -> None:
    assert offline_enabled, "the driver generated nothing"
    for out in offline_enabled:
        summary = wait_for_offline_trail(agent.query, str(out["request_id"]))
        trail = wait_for_trail(agent.query, summary.request_id, lambda t: True)
        s = trail.summary
        assert s.grammar_backend == "xgrammar"
        assert s.grammar_spec_type == "json"
        assert s.finish_reason == out["finish_reason"]
        assert s.completion_tokens == len(out["token_ids"])
        assert s.prompt_tokens == out["prompt_tokens"]
        assert s.model == "tiny-offline"

        steps = [e.so_step for e in trail.events if e.WhichOneof("body") == "so_step"]
        # One step per generated token, in order, each token the one vLLM returned.
        assert [t for st in steps for t in st.accepted_tokens] == out["token_ids"]
        assert len(steps) == len(out["token_ids"])
        earlier = allowed_sets.sets_by_step(steps)  # what same_as_step refers to
        for st in steps:
            assert st.accepted
            assert st.allowed_tokens > 0
            # Each step's set, in whichever encoding the hook chose, decoded by the shared
            # decoder and counted independently.
            assert st.vocab_size == VOCAB_SIZE and not st.allowed_set_truncated
            decoded = allowed_sets.decode(st.allowed_set, st.vocab_size, earlier, st.step)
            count, allowed = independent_popcount(decoded.bitmask, VOCAB_SIZE)
            assert st.allowed_tokens == count
            # Every generated token obeyed the grammar's mask.
            assert set(st.accepted_tokens) <= allowed
        so = s.structured_output
        assert so.steps == len(steps)
        assert so.rejected_tokens == 0
        # No set was dropped; the summary accounts for the bytes of every set kept.
        assert (so.allowed_sets_over_step_cap, so.allowed_sets_over_trail_cap) == (0, 0)
        assert so.allowed_set_bytes == sum(st.allowed_set.ByteSize() for st in steps)


def test_the_callers_request_id_finds_its_trail(
    offline_enabled: list[dict[str, Any]], agent: Agent
) -> None:
    """The trail is keyed by vLLM's engine id (`0-ab9a1c82`); the id the user holds is
    `RequestOutput.request_id` (`0`): it is the trail's client_request_id, which the query
    API filters on (`vllm-audit query list --client-request-id 0`)."""
    for out in offline_enabled:
        user_id = str(out["request_id"])
        summary = wait_for_offline_trail(agent.query, user_id)
        assert summary.request_id != user_id and summary.client_request_id == user_id
        found = agent.query.ListTrails(query_pb2.ListTrailsRequest(client_request_id=user_id))
        assert summary.request_id in [t.request_id for t in found.trails]
        # Other offline runs on this agent reuse the counter: every trail found is one of `0`.
        assert all(t.request_id.startswith(user_id + "-") for t in found.trails)


def test_allowed_sets_are_stored_smaller_than_raw_rows(
    offline_enabled: list[dict[str, Any]], agent: Agent
) -> None:
    raw_row = allowed_sets.wire_size(allowed_sets.BITMASK, allowed_sets.bitmask_bytes(VOCAB_SIZE))
    sizes, forms = [], set()
    for _, trail in offline_trails(offline_enabled, agent):
        for e in trail.events:
            if e.WhichOneof("body") == "so_step":
                sizes.append(e.so_step.allowed_set.ByteSize())
                forms.add(allowed_sets.encoding_of(e.so_step.allowed_set))
    assert sizes and max(sizes) <= raw_row
    mean = sum(sizes) / len(sizes)
    # The figure the README quotes (run with -s to see it).
    print(f"\nallowed sets, JSON schema, vocabulary {VOCAB_SIZE}: {len(sizes)} steps, "
          f"{mean:.1f} bytes/step encoded vs {raw_row} raw, forms {sorted(forms)}")
    assert mean < raw_row / 2


def test_replay_checks_every_recorded_set_and_names_an_altered_one(
    offline_enabled: list[dict[str, Any]], agent: Agent, tiny_model: Path
) -> None:
    result, trail = next((r, t) for r, t in offline_trails(offline_enabled, agent)
                         if len(r["token_ids"]) >= 3)
    report = replay_in_tests("xgrammar", trail, tiny_model)
    assert report.proven, report
    assert report.sets_checked == len(result["token_ids"]) and report.sets_truncated == 0

    # One token added to the set recorded at step 2 (with its count, so only the set is off).
    altered = type(trail)()
    altered.CopyFrom(trail)
    step = next(e.so_step for e in altered.events
                if e.WhichOneof("body") == "so_step" and e.so_step.step == 2)
    steps = [e.so_step for e in altered.events if e.WhichOneof("body") == "so_step"]
    decoded = allowed_sets.decode(step.allowed_set, step.vocab_size,
                                  allowed_sets.sets_by_step(steps), step.step)
    extra = next(t for t in range(VOCAB_SIZE) if t not in decoded)
    ids = sorted({*decoded.ids(), extra})
    step.allowed_set.CopyFrom(pb_ids(ids))
    step.allowed_tokens += 1
    step.allowed_per_token[0] += 1
    report = replay_in_tests("xgrammar", altered, tiny_model)
    assert report.first_mismatch is not None
    assert report.first_mismatch.step == 2
    assert f"differs from the grammar's row in 1 tokens (first: token {extra}, recorded as " \
           "allowed)" in report.first_mismatch.reason


def pb_ids(ids: list[int]) -> Any:
    from vllm_audit.v1 import events_pb2 as pb

    deltas = [b - a for a, b in zip([0, *ids], ids, strict=False)]
    return pb.AllowedTokenSet(allowed_ids=pb.TokenIdDeltas(deltas=deltas))


def test_record_reaches_kafka(
    offline_enabled: list[dict[str, Any]], agent: Agent, kafka: KafkaBroker
) -> None:
    wanted = {
        wait_for_offline_trail(agent.query, str(out["request_id"])).request_id: out
        for out in offline_enabled
    }

    async def consume() -> dict[str, dict[str, Any]]:
        consumer = AIOKafkaConsumer(
            "vllm-audit.requests", bootstrap_servers=kafka.bootstrap,
            auto_offset_reset="earliest", enable_auto_commit=False,
        )
        await consumer.start()
        found: dict[str, dict[str, Any]] = {}
        try:
            async with asyncio.timeout(60):
                while set(wanted) - set(found):
                    batch = await consumer.getmany(timeout_ms=500)
                    for records in batch.values():
                        for record in records:
                            # The key is the record log's id; the trail is in the record.
                            value = json.loads(record.value)
                            if value.get("trail_id") in wanted:
                                found[value["trail_id"]] = value
        finally:
            await consumer.stop()
        return found

    found = asyncio.run(consume())
    # Real records from the real engine, read back from the broker, match the shipped schema.
    validator = jsonschema.Draft202012Validator(json.loads(RECORD_SCHEMA.read_text()))
    for trail_id, out in wanted.items():
        value = found[trail_id]
        validator.validate(value)
        assert value["schema"] == SCHEMA_VERSION
        assert value["event_id"] == f"{trail_id}/{value['revision']}"
        assert value["gen_ai.request.model"] == "tiny-offline"
        assert value["gen_ai.usage.output_tokens"] == len(out["token_ids"])
        assert value["gen_ai.usage.input_tokens"] == out["prompt_tokens"]


def test_replay_proves_a_trail_from_its_kafka_record_alone(
    offline_enabled: list[dict[str, Any]], agent: Agent, kafka: KafkaBroker, tiny_model: Path
) -> None:
    """At level full and up a record carries its grammar and every step: the Kafka message
    alone is a proof (no agent needed), and an altered record is caught at its step."""
    from vllm_audit_agent.records.replay import trail_from_records
    from vllm_audit_agent.records.verify import kafka_payloads

    result, trail = next((r, t) for r, t in offline_trails(offline_enabled, agent)
                         if len(r["token_ids"]) >= 3)
    trail_id = trail.summary.request_id
    mine: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while not mine and time.monotonic() < deadline:
        payloads = asyncio.run(kafka_payloads(kafka.bootstrap, ["vllm-audit.requests"]))
        mine = [r for r in map(json.loads, payloads) if r.get("trail_id") == trail_id]
        if not mine:
            time.sleep(0.5)
    record = max(mine, key=lambda r: r["revision"])
    assert record["grammar_events_omitted"] == 0
    kinds = [next(k for k in ("grammar_compiled", "so_step") if k in e)
             for e in record["grammar_events"]]
    assert kinds.count("grammar_compiled") == 1
    assert kinds.count("so_step") == len(result["token_ids"])

    report = replay_in_tests("xgrammar", trail_from_records(mine, trail_id, "kafka"), tiny_model)
    assert report.proven, report
    assert report.tokens_checked == len(result["token_ids"])
    assert report.sets_checked == len(result["token_ids"])

    # The record altered at step 2 (another token in place of the one generated).
    altered = json.loads(json.dumps(record))
    step = next(e["so_step"] for e in altered["grammar_events"]
                if "so_step" in e and int(e["so_step"]["step"]) == 2)
    token = int(step["accepted_tokens"][0])
    step["accepted_tokens"][0] = forbidden_token("xgrammar", trail, tiny_model, 2)
    assert step["accepted_tokens"][0] != token
    report = replay_in_tests("xgrammar", trail_from_records([altered], None, "kafka"),
                             tiny_model)
    assert report.first_mismatch is not None and report.first_mismatch.step == 2


def test_metrics_show_engine_and_trail_counters(
    offline_enabled: list[dict[str, Any]], agent: Agent
) -> None:
    for out in offline_enabled:
        wait_for_offline_trail(agent.query, str(out["request_id"]))
    with urllib.request.urlopen(agent.metrics_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "vllm_audit_engine_kv_cache_usage_ratio",
        "vllm_audit_engine_num_requests_running",
        "vllm_audit_engine_num_requests_waiting",
    ):
        assert name in families and families[name].samples, f"{name} missing from /metrics"
    finished = [
        s.value for s in families["vllm_audit_trails"].samples
        if s.name == "vllm_audit_trails_total" and s.labels.get("state") == "finished"
    ]
    assert finished and finished[0] >= len(offline_enabled)


def test_generation_identical_with_hook_disabled(
    offline_enabled: list[dict[str, Any]], offline_disabled: list[dict[str, Any]]
) -> None:
    assert [o["token_ids"] for o in offline_enabled] == [o["token_ids"] for o in offline_disabled]
    assert [o["text"] for o in offline_enabled] == [o["text"] for o in offline_disabled]
