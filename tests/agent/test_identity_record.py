"""Identity provenance through the real agent: the hook's HttpRequest fields reach the trail and
its record (valid against the committed schema); a hook older than the enums still gets its
auth status recorded; values the contract does not define are repaired, never recorded."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.test_agent import scrape
from tests.support.agent_harness import Hook, agent, lifecycle, published_keys, query, requests_of
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schema" /
                     "trail-record.schema.json").read_text())
T = 10**15


def finished(rid: str) -> pb.Event:
    return lifecycle(f"chatcmpl-{rid}-1a2b3c4d", pb.LIFECYCLE_PHASE_FINISHED, T,
                     finish_reason="stop")


async def test_identity_and_its_sources_reach_trail_and_record(tmp_path: Path) -> None:
    current = pb.HttpRequest(
        method="POST", status_code=200, model="m", user="alice", tenant="bank-a", claimed_user="mallory",
        user_source=pb.IDENTITY_SOURCE_API_KEY, tenant_source=pb.IDENTITY_SOURCE_PROXY_HEADER,
        auth_decision=pb.AUTH_STATUS_OK, auth_status="ok",
        ignored_identity_headers=["x-forwarded-for"])
    # A hook from before the enums: only the string.
    older = pb.HttpRequest(method="POST", status_code=401, model="m", user="bob",
                           auth_status="rejected")
    # A broken (or newer) hook: numbers the contract does not define, a flood of header names.
    broken = pb.HttpRequest(method="POST", status_code=200, model="m", auth_decision=99,  # type: ignore[arg-type]
                            user_source=42, ignored_identity_headers=["h"] * 40)  # type: ignore[arg-type]
    async with agent(tmp_path) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        await hook.next("config")
        await hook.send(1, pb.Event(time_unix_nano=T, request_id="aaa", http=current),
                        finished("aaa"))
        await hook.send(2, pb.Event(time_unix_nano=T, request_id="bbb", http=older))
        await hook.send(3, pb.Event(time_unix_nano=T, request_id="ccc", http=broken),
                        finished("ccc"))
        await published_keys(published, 3)
        q = query(handle)
        a = (await q.GetTrail(query_pb2.GetTrailRequest(request_id="aaa"))).summary
        assert (a.user, a.user_source, a.tenant, a.tenant_source, a.claimed_user) == (
            "alice", pb.IDENTITY_SOURCE_API_KEY, "bank-a", pb.IDENTITY_SOURCE_PROXY_HEADER,
            "mallory")
        assert (a.auth_decision, a.auth_status) == (pb.AUTH_STATUS_OK, "ok")
        assert list(a.ignored_identity_headers) == ["x-forwarded-for"]
        b = (await q.GetTrail(query_pb2.GetTrailRequest(request_id="bbb"))).summary
        assert (b.auth_decision, b.auth_status) == (pb.AUTH_STATUS_REJECTED, "rejected")
        assert b.user_source == pb.IDENTITY_SOURCE_UNSPECIFIED  # nobody said where it came from
        c = (await q.GetTrail(query_pb2.GetTrailRequest(request_id="ccc"))).summary
        assert (c.auth_decision, c.auth_status, c.user_source) == (
            pb.AUTH_STATUS_UNSPECIFIED, "", pb.IDENTITY_SOURCE_UNSPECIFIED)
        assert len(c.ignored_identity_headers) == 16
        records = {key: record for key, record in requests_of(published)}
        for record in records.values():
            jsonschema.validate(record, SCHEMA)
        assert {k: records["aaa"][k] for k in (
            "user", "user_source", "tenant", "tenant_source", "claimed_user", "auth_decision",
            "auth_status", "ignored_identity_headers")} == {
            "user": "alice", "user_source": "IDENTITY_SOURCE_API_KEY", "tenant": "bank-a",
            "tenant_source": "IDENTITY_SOURCE_PROXY_HEADER", "claimed_user": "mallory",
            "auth_decision": "AUTH_STATUS_OK", "auth_status": "ok",
            "ignored_identity_headers": ["x-forwarded-for"]}
        clamped = handle.state.clamped_fields
        assert (clamped["HttpRequest.auth_decision"], clamped["HttpRequest.user_source"],
                clamped["HttpRequest.tenant_source"],
                clamped["HttpRequest.ignored_identity_headers"]) == (1, 1, 0, 1)
        # Counted once per served request, by source and decision; every series born at 0.
        status, text = await scrape(handle)
        assert status == 200
        samples = {(x.name, tuple(sorted(x.labels.items()))): x.value
                   for family in text_string_to_metric_families(text) for x in family.samples}

        def sample(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        sources = "vllm_audit_request_identity_sources_total"
        assert sample(sources, field="user", source="api_key") == 1
        assert sample(sources, field="tenant", source="proxy_header") == 1
        assert sample(sources, field="user", source="unspecified") == 2  # older + repaired
        assert sample(sources, field="tenant", source="claimed") == 0
        decisions = "vllm_audit_request_auth_decisions_total"
        assert [sample(decisions, decision=d) for d in ("ok", "rejected", "none",
                                                        "unspecified")] == [1, 1, 0, 1]
        assert sample("vllm_audit_request_ignored_identity_headers_total") == 2
