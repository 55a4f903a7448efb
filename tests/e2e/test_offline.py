"""Offline `LLM` with JSON-schema structured output, hook at full-with-allowed-sets."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Agent
from tests.e2e.helpers import wait_for_offline_trail, wait_for_trail
from tests.support.kafka_broker import KafkaBroker
from vllm_audit_agent.records import SCHEMA_VERSION

RECORD_SCHEMA = Path(__file__).resolve().parents[2] / "schema" / "trail-record.schema.json"

pytestmark = pytest.mark.vllm

VOCAB_SIZE = 1024  # tests/support/tiny_model.py


def independent_popcount(bitmask: bytes, vocab_size: int) -> tuple[int, set[int]]:
    """Counts allowed tokens bit by bit with np.unpackbits (not the hook's bitwise_count)."""
    bits = np.unpackbits(np.frombuffer(bitmask, dtype=np.uint8), bitorder="little")[:vocab_size]
    allowed = set(np.flatnonzero(bits).tolist())
    return len(allowed), allowed


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
        for st in steps:
            assert st.accepted
            assert st.allowed_tokens > 0
            count, allowed = independent_popcount(st.allowed_bitmask, VOCAB_SIZE)
            assert st.allowed_tokens == count
            # Every generated token obeyed the grammar's mask.
            assert set(st.accepted_tokens) <= allowed
        assert s.structured_output.steps == len(steps)
        assert s.structured_output.rejected_tokens == 0


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
                            key = record.key.decode() if record.key else ""
                            if key in wanted:
                                found[key] = json.loads(record.value)
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
