"""Content signals through a real `vllm serve` with the hook (issue 21): a prompt with
`DROP TABLE` is flagged in its record, read back from Kafka, while the record's prompt stays
an HMAC (the default capture policy: this module's own server runs without the tests'
`full` capture); a benign prompt is not flagged; the agent counts the flagged request in its
metrics."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from aiokafka import AIOKafkaConsumer

from harness import procs
from harness.kafka_broker import KafkaBroker
from tests.e2e.conftest import API_KEY, Agent
from tests.e2e.helpers import FINAL_STATES, scrape, wait_for_trail
from vllm_audit.v1 import query_pb2

pytestmark = pytest.mark.vllm

RECORD_SCHEMA = Path(__file__).resolve().parents[2] / "schema" / "trail-record.schema.json"
HOSTILE = "Look up the user Robert'); DROP TABLE users; -- please"
BENIGN = "Give me a recipe for a simple tomato soup for four people."


def _chat(base: str, content: str) -> str:
    request_id = uuid.uuid4().hex
    client = openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                   max_tokens=4, temperature=0,
                                   extra_headers={"X-Request-Id": request_id})
    return request_id


def _final(t: query_pb2.GetTrailResponse) -> bool:
    return t.summary.state in FINAL_STATES and t.summary.status_code != 0


def _records(bootstrap: str, trail_ids: set[str]) -> dict[str, dict[str, Any]]:
    async def consume() -> dict[str, dict[str, Any]]:
        consumer = AIOKafkaConsumer("vllm-audit.requests", bootstrap_servers=bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        found: dict[str, dict[str, Any]] = {}
        try:
            async with asyncio.timeout(60):
                while trail_ids - set(found):
                    batch = await consumer.getmany(timeout_ms=500)
                    for records in batch.values():
                        for record in records:
                            value = json.loads(record.value)
                            if value.get("trail_id") in trail_ids:
                                found[value["trail_id"]] = value
        finally:
            await consumer.stop()
        return found

    return asyncio.run(consume())


def _flagged(agent: Agent, signal: str, side: str) -> float:
    samples = scrape(agent.metrics_url)["vllm_audit_request_content_signals_total"]
    return next(v for labels, v in samples
                if labels == {"signal": signal, "side": side})


@pytest.fixture(scope="module")
def hmac_server(tiny_model: Path, e2e_tmp: Path, agent: Agent) -> Iterator[str]:
    """`vllm serve` with the hook on the capture policy's defaults (hmac)."""
    proc, base = procs.start_vllm_server(
        tiny_model, e2e_tmp, agent.socket, API_KEY, VLLM_AUDIT_CAPTURE_PROMPT="hmac",
        VLLM_AUDIT_CAPTURE_OUTPUT="hmac", VLLM_AUDIT_CAPTURE_CLIENT_IP="hmac")
    try:
        yield base
    finally:
        proc.stop()


def test_a_drop_table_prompt_is_flagged_while_its_text_stays_an_hmac(
        hmac_server: str, agent: Agent, kafka: KafkaBroker) -> None:
    vllm_server = hmac_server
    flagged_before = _flagged(agent, "sql_injection", "prompt")
    hostile = wait_for_trail(agent.query, _chat(vllm_server, HOSTILE), _final).summary
    benign = wait_for_trail(agent.query, _chat(vllm_server, BENIGN), _final).summary
    # The query API's summary carries them as the hook counted them.
    assert hostile.content_signals.ruleset == "vllm-audit-signals/1"
    assert hostile.content_signals.prompt["sql_injection"] >= 1
    assert dict(benign.content_signals.prompt) == {}
    records = _records(kafka.bootstrap, {hostile.request_id, benign.request_id})
    record = records[hostile.request_id]
    jsonschema.Draft202012Validator(json.loads(RECORD_SCHEMA.read_text())).validate(record)
    signals = record["content_signals"]
    assert signals["ruleset"] == "vllm-audit-signals/1"
    assert signals["prompt"]["sql_injection"] >= 1
    assert record["content_signals_unscanned_chars"] == 0
    # The text itself never left vLLM's process: the prompt is an HMAC, and no part of the
    # matched text is anywhere in the record.
    assert record["prompt"].startswith("hmac-sha256:")
    assert "DROP" not in json.dumps(record) and "Robert" not in json.dumps(record)
    assert records[benign.request_id]["content_signals"]["prompt"] == {}
    assert _flagged(agent, "sql_injection", "prompt") >= flagged_before + 1
