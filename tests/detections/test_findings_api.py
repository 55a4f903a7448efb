"""ListFindings: the detection rules' findings served by a real agent's and a real fleet
service's query API (gRPC and JSON over HTTP), filtered by rule, subject, severity and time,
a tenant-auditor held to its tenant, and `vllm-audit findings` against either."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest

from tests.agent.test_auth import code_of, tokens_file
from tests.fleet.test_fleet_api import stub
from tests.support.agent_harness import Hook, agent, lifecycle, query, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.fleet_config import FleetApiConfig
from vllm_audit_agent.api.fleet_server import running_fleet_api
from vllm_audit_agent.api.fleet_trails import WatchedStore
from vllm_audit_agent.cli.main import main
from vllm_audit_agent.detections.engine import RuleEngine
from vllm_audit_agent.detections.settings import DetectionSettings
from vllm_audit_agent.fleet.findings import FindingsTable, FleetDetections
from vllm_audit_agent.records.chain import canonical, record_hash

T0_NS = 1_700_000_000 * 10**9
#: Who crawls: (user, tenant, address); acme and globex are the test tokens' tenants.
CRAWLERS = (("mallory", "acme", "10.0.0.1"), ("eve", "globex", "10.0.0.2"))


def served(rid: str, t_ns: int, user: str, tenant: str, ip: str) -> list[pb.Event]:
    http = pb.Event(time_unix_nano=t_ns, request_id=rid, http=pb.HttpRequest(
        status_code=200, model="tiny", user=user, tenant=tenant, client_ip=ip, prompt_tokens=8,
        completion_tokens=8, latency_ms=20.0, method="POST", path="/v1/chat/completions"))
    engine = lifecycle(f"chatcmpl-{rid}-1a2b3c4d", pb.LIFECYCLE_PHASE_FINISHED, t_ns,
                       finish_reason="stop", num_output_tokens=8)
    return [http, engine]


def listed(response: q.ListFindingsResponse) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in response.findings]


def newest_first(found: list[dict[str, Any]]) -> bool:
    ends = [f["window_end_ms"] for f in found]
    return ends == sorted(ends, reverse=True)


async def crawl(handle: Any, publisher: Any) -> list[dict[str, Any]]:
    """60 calls in 3 s from each crawler: a high_call_rate finding for each one's user and
    address (four); returns them as published."""
    async with Hook(handle.state.config.ingest_socket) as hook:
        seq = 1
        for user, tenant, ip in CRAWLERS:
            for i in range(60):
                await hook.send(seq, *served(f"{user}-{i}", T0_NS + i * 50_000_000, user, tenant,
                                             ip), model="tiny")
                seq += 1
    await until(lambda: sum(t == "findings" for t, _, _ in publisher.records) == 4,
                "four findings published")
    return [r for t, _, r in publisher.records if t == "findings"]


async def test_the_agent_lists_its_findings_filtered_and_scoped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokens = tokens_file(tmp_path)
    async with agent(tmp_path, detections=True, auth_tokens_file=tokens) as (handle, publisher):
        published = await crawl(handle, publisher)
        auditor = query(handle, "aud-secret")
        found = listed(await auditor.ListFindings(q.ListFindingsRequest()))
        # Every finding, newest first, each the chained record exactly as the log holds it.
        assert {f["finding_id"] for f in found} == {f["finding_id"] for f in published}
        assert newest_first(found) and all(record_hash(f) == f["hash"] for f in found)
        # By rule, subject, kind, severity and window end.
        (eve,) = listed(await auditor.ListFindings(q.ListFindingsRequest(subject="eve")))
        assert eve["subject"] == {"kind": "user", "value": "eve"} and eve["tenant"] == "globex"
        addresses = listed(await auditor.ListFindings(q.ListFindingsRequest(
            rule="high_call_rate", subject_kind="client_ip")))
        assert {f["subject"]["value"] for f in addresses} == {"10.0.0.1", "10.0.0.2"}
        assert listed(await auditor.ListFindings(q.ListFindingsRequest(
            rule="output_length_anomaly"))) == []
        assert listed(await auditor.ListFindings(q.ListFindingsRequest(severity="high"))) == []
        newest = found[0]["window_end_ms"]
        assert listed(await auditor.ListFindings(q.ListFindingsRequest(
            since_unix_ms=newest + 1))) == []
        older = listed(await auditor.ListFindings(q.ListFindingsRequest(until_unix_ms=newest)))
        assert older == [f for f in found if f["window_end_ms"] < newest]
        assert len(listed(await auditor.ListFindings(q.ListFindingsRequest(page_size=1)))) == 1
        # A tenant-auditor sees its tenant's findings only, whatever it asks for.
        acme = listed(await query(handle, "ta-secret").ListFindings(q.ListFindingsRequest()))
        assert len(acme) == 2 and {f["tenant"] for f in acme} == {"acme"}
        assert listed(await query(handle, "ta-secret").ListFindings(
            q.ListFindingsRequest(tenant="globex"))) == []
        # Audit data: not an operator's; a value outside its set is refused, named.
        assert await code_of(query(handle, "op-secret").ListFindings(
            q.ListFindingsRequest())) == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError, match="severity 'urgent' is not one of"):
            await auditor.ListFindings(q.ListFindingsRequest(severity="urgent"))
        # The same call over HTTP, the records as JSON objects.
        async with httpx.AsyncClient(base_url=f"http://{handle.http_address}/api/v1",
                                     headers={"Authorization": "Bearer aud-secret"}) as client:
            answer = await client.get("/findings", params={"rule": "high_call_rate",
                                                          "subject": "eve"})
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"findings": [eve]}
            bad = await client.get("/findings", params={"rules": "high_call_rate"})
            assert bad.status_code == 400 and "unknown query parameter 'rules'" in bad.text
        # `vllm-audit findings` (blocking gRPC: beside the loop that serves it).
        capsys.readouterr()
        code = await asyncio.to_thread(main, [
            "findings", "--rule", "high_call_rate", "--subject-kind", "user",
            "--address", handle.query_address, "--token", "aud-secret", "--output", "table"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert out.splitlines()[0].split() == ["WINDOW_END", "RULE", "SEVERITY", "SUBJECT",
                                               "OBSERVED", "THRESHOLD", "SCOPE", "SUMMARY"]
        assert "user:mallory" in out and "user:eve" in out and "client_ip:" not in out
        code = await asyncio.to_thread(main, [
            "findings", "--subject", "eve", "--address", handle.query_address,
            "--token", "aud-secret"])
        assert code == 0 and orjson.loads(capsys.readouterr().out) == {"findings": [eve]}
    # Restarted: the findings of the earlier run are read back from the log.
    async with agent(tmp_path, detections=True, auth_tokens_file=tokens) as (handle, _):
        auditor = query(handle, "aud-secret")
        again: list[dict[str, Any]] = []

        async def reread() -> None:
            again[:] = listed(await auditor.ListFindings(q.ListFindingsRequest()))
        for _ in range(100):
            await reread()
            if len(again) == 4:
                break
            await asyncio.sleep(0.1)
        assert again == found
    # Without the rules the call says so rather than answering "nothing found".
    async with agent(tmp_path, auth_tokens_file=tokens) as (handle, _):
        with pytest.raises(grpc.aio.AioRpcError, match="runs no detection rules") as refused:
            await query(handle, "aud-secret").ListFindings(q.ListFindingsRequest())
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


#: The fleet's records: recorded an hour ago (older ones would meet the store's TTLs).
FLEET_T0_MS = int(time.time() * 1000) - 3_600_000


def request_record(i: int, log_id: str, user: str, tenant: str) -> bytes:
    return canonical({"type": "request", "log_id": log_id, "seq": i + 2,
                      "trail_id": f"{log_id}-t{i}", "revision": 0,
                      "created_unix_ms": FLEET_T0_MS + i * 100, "user": user,
                      "tenant": tenant, "model": "tiny", "status_code": 200,
                      "completion_tokens": 5, "recorded_unix_ms": FLEET_T0_MS + i * 100})


def pod_finding(log_id: str, seq: int, user: str, tenant: str, end_ms: int) -> bytes:
    """A pod's finding record as it arrives from <prefix>.findings."""
    record = {"type": "finding", "schema": 1, "finding_id": f"pod-{log_id}-{seq}",
              "rule": "high_call_rate", "ruleset": "vllm-audit-rules/1", "severity": "medium",
              "subject": {"kind": "user", "value": user}, "tenant": tenant,
              "window_start_ms": end_ms - 4000, "window_end_ms": end_ms, "observed": 51.0,
              "threshold": 50.0, "evidence_trail_ids": [f"{log_id}-t0"], "evidence_count": 51,
              "summary": f"user {user} made 51 calls", "scope": "pod", "log_id": log_id,
              "seq": seq, "prev_hash": "0" * 64, "recorded_unix_ms": end_ms + 50}
    record["hash"] = record_hash(record)
    return canonical(record)


async def test_the_fleet_lists_the_pods_findings_and_its_own(tmp_path: Path) -> None:
    store = WatchedStore.open(str(tmp_path / "chdb"))
    try:
        # The fleet's own: 20 calls of mallory (acme) on each of three pods, 60 in all.
        detections = FleetDetections(RuleEngine(DetectionSettings(), "fleet", dedupe=True),
                                     FindingsTable(store.backend, store.db))
        calls = [request_record(i * 3 + pod, f"log-{pod}", "mallory", "acme")
                 for i in range(20) for pod in range(3)]
        store.insert(calls)
        assert detections.feed(calls) == 1
        # The pods': eve (globex) on one pod, and one of mallory's delivered twice.
        end = FLEET_T0_MS
        pods = [pod_finding("log-1", 500, "eve", "globex", end - 60_000),
                pod_finding("log-2", 700, "mallory", "acme", end - 120_000)]
        store.insert([*pods, pods[1]])
        config = FleetApiConfig(query_address="127.0.0.1:0", api_http_address="127.0.0.1:0",
                                api_data_dir=tmp_path / "api",
                                auth_tokens_file=tokens_file(tmp_path))
        async with running_fleet_api(store, config) as handle:
            auditor = stub(handle, "aud")
            found = listed(await auditor.ListFindings(q.ListFindingsRequest()))
            assert [(f["scope"], f["subject"]["value"]) for f in found] == [
                ("fleet", "mallory"), ("pod", "eve"), ("pod", "mallory")]
            assert newest_first(found)
            assert found[1:] == [orjson.loads(p) for p in pods]  # as the pods chained them
            assert [f["scope"] for f in listed(await auditor.ListFindings(
                q.ListFindingsRequest(subject="mallory")))] == ["fleet", "pod"]
            assert listed(await auditor.ListFindings(q.ListFindingsRequest(
                until_unix_ms=found[0]["window_end_ms"]))) == found[1:]
            assert listed(await auditor.ListFindings(q.ListFindingsRequest(
                since_unix_ms=end - 90_000, subject_kind="user"))) == found[:2]
            assert listed(await auditor.ListFindings(q.ListFindingsRequest(
                rule="token_spend_spike"))) == []
            assert len(listed(await auditor.ListFindings(q.ListFindingsRequest(page_size=2)))) == 2
            # A tenant-auditor: its tenant's, both scopes; never another's.
            acme = listed(await stub(handle, "ta").ListFindings(q.ListFindingsRequest()))
            assert [f["tenant"] for f in acme] == ["acme", "acme"]
            assert listed(await stub(handle, "tb").ListFindings(q.ListFindingsRequest(
                tenant="acme"))) == []
            async with httpx.AsyncClient(base_url=f"http://{handle.http_address}/api/v1",
                                         headers={"Authorization": "Bearer tb-secret"}) as client:
                answer = await client.get("/findings")
                assert answer.status_code == 200 and answer.json() == {"findings": [found[1]]}
            # `vllm-audit findings` against the fleet.
            code = await asyncio.to_thread(main, [
                "findings", "--rule", "high_call_rate", "--address", handle.query_address,
                "--token", "aud-secret", "--limit", "1"])
            assert code == 0
    finally:
        store.close()
