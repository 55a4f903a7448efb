"""The agent's detections end to end in-process: a real agent (--detections) fed by the hook's
gRPC protocol; findings are chained into its record log, published on the findings topic,
counted, and the log still verifies with them in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.test_metrics import get
from tests.support.agent_harness import Hook, agent, lifecycle, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.records.chain import load_or_create_signer
from vllm_audit_agent.records.read_only import read_records
from vllm_audit_agent.records.verify import verify_chain

T0_NS = 1_700_000_000 * 10**9


def served(rid: str, t_ns: int, user: str, output_tokens: int) -> list[pb.Event]:
    """A served request's two halves (HTTP and engine), as the hook sends them."""
    http = pb.Event(time_unix_nano=t_ns, request_id=rid, http=pb.HttpRequest(
        status_code=200, model="tiny", user=user, client_ip="127.0.0.1", prompt_tokens=8,
        completion_tokens=output_tokens, latency_ms=20.0, method="POST",
        path="/v1/chat/completions"))
    engine = lifecycle(f"chatcmpl-{rid}-1a2b3c4d", pb.LIFECYCLE_PHASE_FINISHED, t_ns,
                       finish_reason="length", num_output_tokens=output_tokens)
    return [http, engine]


def rules_file(tmp: Path) -> Path:
    path = tmp / "rules.yaml"
    path.write_text("rules:\n  output_length_anomaly: {warmup: 10, min_value: 64}\n")
    return path


def findings_of(records: list[tuple[str, Any, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [r for topic, _, r in records if topic == "findings"]


async def test_findings_are_chained_published_counted_and_verify(tmp_path: Path) -> None:
    async with agent(tmp_path, detections=True, detection_rules_file=rules_file(tmp_path)) \
            as (handle, publisher), Hook(handle.state.config.ingest_socket) as hook:
        seq = 1
        # 80 calls in 4 s from one user, 8 output tokens each: her baseline.
        for i in range(80):
            await hook.send(seq, *served(f"m{i}", T0_NS + i * 50_000_000, "mallory", 8),
                            model="tiny")
            seq += 1
        # Then one answer of 400 tokens, a minute later.
        await hook.send(seq, *served("long", T0_NS + 60 * 10**9, "mallory", 400), model="tiny")

        def found() -> set[str]:
            return {str(f["rule"]) for f in findings_of(publisher.records)}
        await until(lambda: {"high_call_rate", "output_length_anomaly"} <= found(),
                    "both findings published")
        findings = findings_of(publisher.records)
        rate = [f for f in findings if f["rule"] == "high_call_rate"]
        # Her user and her address (every call came from one); no API key was sent.
        assert sorted(str(f["subject"]) for f in rate) == [
            str({"kind": "client_ip", "value": "127.0.0.1"}), str({"kind": "user", "value": "mallory"})]
        assert rate[0]["type"] == "finding" and rate[0]["scope"] == "pod"
        assert rate[0]["log_id"] == handle.state.records.log_id
        long = [f for f in findings if f["rule"] == "output_length_anomaly"]
        assert {f["subject"]["kind"] for f in long} == {"user", "model"}
        assert all(f["observed"] == 400 for f in long)
        trail_ids = {r["trail_id"] for t, _, r in publisher.records
                     if t == "requests" and r.get("client_request_id") == ""}
        assert set(long[0]["evidence_trail_ids"]) <= trail_ids
        _, body = await get(handle)
        samples = {(s.name, s.labels.get("rule"), s.labels.get("severity")): s.value
                   for f in text_string_to_metric_families(body.decode()) for s in f.samples
                   if s.name == "vllm_audit_findings_total"}
        assert samples[("vllm_audit_findings_total", "high_call_rate", "medium")] == 2
        assert samples[("vllm_audit_findings_total", "output_length_anomaly", "high")] == 2
        assert samples[("vllm_audit_findings_total", "auth_failure_burst", "high")] == 0
    # Stopped cleanly: the log, findings and all, verifies (a checkpoint covers the last one).
    data = tmp_path / "data"
    records = [orjson.loads(p) for p in read_records(data / "records")]
    assert sum(r["type"] == "finding" for r in records) == 4
    signer = load_or_create_signer(None, data)
    report = verify_chain(read_records(data / "records"), signer.public_key)
    assert report.intact, report.broken


async def test_detections_off_write_no_findings_and_export_zeros(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, publisher), \
            Hook(handle.state.config.ingest_socket) as hook:
        for i in range(60):
            await hook.send(i + 1, *served(f"m{i}", T0_NS + i * 10_000_000, "mallory", 8),
                            model="tiny")
        await until(lambda: sum(t == "requests" for t, _, _ in publisher.records) >= 60,
                    "60 records published")
        _, body = await get(handle)
        assert findings_of(publisher.records) == []
        values = [s.value for f in text_string_to_metric_families(body.decode())
                  for s in f.samples if s.name == "vllm_audit_findings_total"]
        assert values == [0.0] * 7
