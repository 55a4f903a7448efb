"""Detections through a real vLLM with the hook (issue 21's "done when"): 80 calls in a few
seconds from one user make a high_call_rate finding naming that user, an answer far longer
than the user's baseline an output_length_anomaly finding; both are finding records in the
agent's record log (which still verifies) and on the Kafka findings topic."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from harness import procs
from harness.kafka_broker import KafkaBroker
from vllm_audit_agent.records.chain import load_or_create_signer
from vllm_audit_agent.records.read_only import read_records
from vllm_audit_agent.records.verify import kafka_payloads, verify_chain

pytestmark = pytest.mark.vllm

PREFIX = "e2e-detections"
USER = "crawler-7"


@dataclass
class DetectingAgent:
    proc: procs.Proc
    socket: Path
    data_dir: Path


@pytest.fixture(scope="module")
def detecting_agent(e2e_tmp: Path, kafka: KafkaBroker) -> Iterator[DetectingAgent]:
    """An agent of its own (the session's runs without detections), on its own topics."""
    home = e2e_tmp / "detections-agent"
    home.mkdir(exist_ok=True)
    rules = home / "detection-rules.yaml"
    # The defaults but a shorter warm-up and a lower floor for the output length (a tiny model
    # and a test's patience): 20 answers of 2 tokens are the user's baseline.
    rules.write_text("rules:\n  output_length_anomaly: {warmup: 20, min_value: 32}\n")
    socket = home / "ingest.sock"
    proc, _, _ = procs.start_agent(home, socket, kafka.bootstrap, "summary", [
        "--detections", "--detection-rules", str(rules), "--kafka-topic-prefix", PREFIX])
    try:
        yield DetectingAgent(proc, socket, home / "agent-data")
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def server(tiny_model: Path, e2e_tmp: Path, detecting_agent: DetectingAgent) -> Iterator[str]:
    proc, base = procs.start_vllm_server(tiny_model, e2e_tmp, detecting_agent.socket, None)
    try:
        yield base
    finally:
        proc.stop()


def chat(client: openai.OpenAI, max_tokens: int) -> int:
    response = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "list the users"}],
        max_tokens=max_tokens, temperature=0, user=USER,
        extra_body={"ignore_eos": True, "min_tokens": max_tokens})
    assert response.usage is not None
    return response.usage.completion_tokens


def findings_on_kafka(bootstrap: str) -> list[dict[str, Any]]:
    payloads = asyncio.run(kafka_payloads(bootstrap, [f"{PREFIX}.findings"], timeout=30))
    return [json.loads(p) for p in payloads]


def test_a_burst_and_a_long_answer_are_findings(server: str, detecting_agent: DetectingAgent,
                                                kafka: KafkaBroker) -> None:
    client = openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=60)
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        lengths = list(pool.map(lambda _: chat(client, 2), range(80)))
    burst_seconds = time.monotonic() - started
    assert lengths == [2] * 80
    assert chat(client, 120) == 120

    wanted = {"high_call_rate", "output_length_anomaly"}
    deadline = time.monotonic() + 90
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [f for f in findings_on_kafka(kafka.bootstrap)
                 if f["subject"] == {"kind": "user", "value": USER}]
        if wanted <= {f["rule"] for f in found}:
            break
        time.sleep(1)
    by_rule = {f["rule"]: f for f in found}
    assert wanted <= set(by_rule), (burst_seconds, found)
    rate = by_rule["high_call_rate"]
    assert rate["type"] == "finding" and rate["scope"] == "pod" and rate["observed"] > 50
    assert rate["window_end_ms"] - rate["window_start_ms"] <= 10_000
    assert len(rate["evidence_trail_ids"]) == 50 and rate["severity"] == "medium"
    long = by_rule["output_length_anomaly"]
    assert long["observed"] == 120 and long["threshold"] < 120
    assert USER in long["summary"]

    # The same findings are records of the agent's log, which verifies with them in it.
    detecting_agent.proc.stop()
    records_dir = detecting_agent.data_dir / "records"
    records = [orjson.loads(p) for p in read_records(records_dir)]
    chained = {r["finding_id"] for r in records if r["type"] == "finding"}
    assert {rate["finding_id"], long["finding_id"]} <= chained
    signer = load_or_create_signer(None, detecting_agent.data_dir)
    report = verify_chain(read_records(records_dir), signer.public_key)
    assert report.intact, report.broken
