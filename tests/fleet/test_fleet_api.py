"""The agent's query API served fleet-wide: a real fleet query server (gRPC and JSON HTTP) over a
real chDB store holding the record logs of two real agents, with the agent's tokens, roles,
tenant scope, page tokens, aggregates and meta-audit (access records in a signed record log of
the API's own, which `vllm-audit verify` checks)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest

from tests.agent.test_auth import ROLES, code_of, tokens_file
from tests.support.agent_harness import Hook, agent, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit.v1 import query_pb2_grpc
from vllm_audit_agent.api.fleet_config import FleetApiConfig
from vllm_audit_agent.api.fleet_server import FleetApiHandle, running_fleet_api
from vllm_audit_agent.api.fleet_trails import WatchedStore
from vllm_audit_agent.api.usage import Price, PriceTable
from vllm_audit_agent.api.usage_metrics import OTHER, bounded
from vllm_audit_agent.cli.client import aio_channel
from vllm_audit_agent.records.chain import PUBLIC_KEY_NAME

REPO = Path(__file__).resolve().parents[2]
T0_MS = 1_790_000_000_000
MINUTE_MS = 60_000
#: Per pod: (trail id, tenant, user, model, status, prompt tokens, completion tokens, minute).
PODS = {
    "a": [("a-1", "acme", "alice", "big", 403, 100, 0, 0),
          ("a-2", "globex", "bob", "big", 500, 200, 50, 2),
          ("a-3", "acme", "carol", "small", 401, 300, 0, 4)],
    "b": [("b-1", "acme", "alice", "small", 429, 1000, 0, 1),
          ("b-2", "globex", "bob", "big", 403, 10, 0, 3),
          ("b-3", "acme", "alice", "big", 404, 20, 0, 5)],
}
PRICES = "currency: USD\nmodels:\n  big: {input_per_1k: 1.0, output_per_1k: 2.0}\n"


async def pod_records(tmp: Path, name: str, trails: list[tuple[Any, ...]]) -> list[bytes]:
    """Runs a real agent, sends its trails through the hook path, and returns its record log
    (every record: genesis, level, requests, checkpoints) as stored."""
    async with agent(tmp / f"pod-{name}") as (handle, _):
        async with Hook(handle.state.config.ingest_socket) as hook:
            for i, (rid, tenant, user, model, status, p, c, minute) in enumerate(trails):
                await hook.send(i + 1, pb.Event(
                    time_unix_nano=(T0_MS + minute * MINUTE_MS) * 10**6, request_id=rid,
                    http=pb.HttpRequest(tenant=tenant, user=user, model=model,
                                        status_code=status, prompt_tokens=p,
                                        completion_tokens=c)))
        records = handle.state.records

        def requests() -> int:
            return sum(orjson.loads(p).get("type") == "request" for _, p in records.wal.replay())

        await until(lambda: requests() == len(trails), f"pod {name}'s records durable")
        return [payload for _, payload in records.wal.replay()]


@contextlib.asynccontextmanager
async def fleet(tmp: Path) -> AsyncIterator[tuple[FleetApiHandle, WatchedStore, list[bytes]]]:
    payloads = [p for name, trails in PODS.items() for p in await pod_records(tmp, name, trails)]
    store = WatchedStore.open(str(tmp / "chdb"))
    try:
        assert store.insert(payloads) == len(payloads)
        (tmp / "prices.yaml").write_text(PRICES)
        config = FleetApiConfig(query_address="127.0.0.1:0", api_http_address="127.0.0.1:0",
                                api_data_dir=tmp / "api", auth_tokens_file=tokens_file(tmp),
                                price_table_file=tmp / "prices.yaml")
        async with running_fleet_api(store, config) as handle:
            yield handle, store, payloads
    finally:
        store.close()


def stub(handle: FleetApiHandle, name: str) -> query_pb2_grpc.QueryServiceStub:
    channels: dict[str, grpc.aio.Channel] = handle.__dict__.setdefault("_channels", {})
    if name not in channels:
        channels[name] = aio_channel(handle.query_address, f"{name}-secret")
    return query_pb2_grpc.QueryServiceStub(channels[name])


def http(handle: FleetApiHandle, name: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {name}-secret"} if name else {}
    return httpx.AsyncClient(base_url=f"http://{handle.http_address}/api/v1", headers=headers,
                             timeout=30)


def ids(trails: Any) -> list[str]:
    return [t.request_id if hasattr(t, "request_id") else t["request_id"] for t in trails]


NEWEST_FIRST = ["b-3", "a-3", "b-2", "a-2", "b-1", "a-1"]


async def test_both_pods_trails_listed_paged_fetched_exported_and_summed(tmp_path: Path) -> None:
    async with fleet(tmp_path) as (handle, _, payloads):
        auditor = stub(handle, "aud")
        everything = await auditor.ListTrails(q.ListTrailsRequest())
        assert ids(everything.trails) == NEWEST_FIRST
        assert not everything.next_page_token
        # Pages of 2 follow the tokens to the end: every trail once, in order.
        seen: list[str] = []
        token = ""
        while True:
            page = await auditor.ListTrails(q.ListTrailsRequest(page_size=2, page_token=token))
            seen += ids(page.trails)
            token = page.next_page_token
            if not token:
                break
        assert seen == NEWEST_FIRST
        alice = await auditor.ListTrails(q.ListTrailsRequest(user="alice", tenant="acme"))
        assert ids(alice.trails) == ["b-3", "b-1", "a-1"]
        window = await auditor.ListTrails(q.ListTrailsRequest(
            since_unix_ms=T0_MS + 2 * MINUTE_MS, until_unix_ms=T0_MS + 4 * MINUTE_MS))
        assert ids(window.trails) == ["b-2", "a-2"]
        got = await auditor.GetTrail(q.GetTrailRequest(request_id="b-2"))
        assert (got.summary.tenant, got.summary.user, got.summary.status_code) == \
            ("globex", "bob", 403)
        assert await code_of(auditor.GetTrail(q.GetTrailRequest(request_id="nope"))) == \
            grpc.StatusCode.NOT_FOUND
        # Export: the request records exactly as the agents stored them, oldest first.
        want = sorted((p for p in payloads if orjson.loads(p)["type"] == "request"),
                      key=lambda p: orjson.loads(p)["timestamp_ms"])
        exported = [r async for chunk in auditor.ExportTrails(q.ExportTrailsRequest())
                    for r in chunk.records]
        assert exported == want
        async with http(handle, "aud") as c:
            reply = await c.get("/trails", params={"model": "big", "page_size": "10"})
            assert reply.status_code == 200, reply.text
            assert ids(reply.json()["trails"]) == ["b-3", "b-2", "a-2", "a-1"]
            lines = (await c.get("/export", params={"tenant": "globex"})).content.splitlines()
            assert [json.loads(line)["trail_id"] for line in lines] == ["a-2", "b-2"]
            usage = (await c.get("/aggregates", params={"group_by": "tenant,model"})).json()
        assert [(r["tenant"], r["model"], r["requests"], r["input_tokens"], r["errors"],
                 round(r["cost"], 6), r["unpriced_requests"]) for r in usage["rows"]] == [
            ("acme", "big", 2, 120, 2, 0.12, 0), ("acme", "small", 2, 1300, 2, 0.0, 2),
            ("globex", "big", 2, 210, 2, 0.31, 0)]
        # The same sums on /metrics, by tenant and model only (bounded: usage_metrics.py).
        async with httpx.AsyncClient(timeout=30) as c:
            scrape = (await c.get(f"http://{handle.http_address}/metrics")).text
        assert 'vllm_audit_fleet_usage_cost{model="big",tenant="globex"} 0.31' in scrape
        assert 'vllm_audit_fleet_usage_requests{model="small",tenant="acme"} 2.0' in scrape
        assert "user=" not in scrape
        stats = await stub(handle, "op").GetStats(q.StatsRequest())
        assert stats.trails_finished == 6
        # The CLI talks to the fleet as to an agent: the same command, the fleet's address.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vllm_audit_agent.cli", "query", "list", "--user", "alice",
            "--address", handle.query_address, "--token", "aud-secret",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert ids(json.loads(out)["trails"]) == ["b-3", "b-1", "a-1"]


async def test_a_tenant_auditor_sees_only_its_tenant_fleet_wide(tmp_path: Path) -> None:
    async with fleet(tmp_path) as (handle, _, _):
        acme = stub(handle, "ta")
        assert ids((await acme.ListTrails(q.ListTrailsRequest())).trails) == \
            ["b-3", "a-3", "b-1", "a-1"]
        assert ids((await acme.ListTrails(q.ListTrailsRequest(tenant="globex"))).trails) == []
        assert ids((await acme.ListTrails(q.ListTrailsRequest(user="bob"))).trails) == []
        for hidden in ("a-2", "b-2"):
            assert await code_of(acme.GetTrail(q.GetTrailRequest(request_id=hidden))) == \
                grpc.StatusCode.NOT_FOUND
        exported = [orjson.loads(r)["tenant"] async for chunk in
                    acme.ExportTrails(q.ExportTrailsRequest()) for r in chunk.records]
        assert exported == ["acme"] * 4
        usage = await acme.GetAggregates(q.AggregatesRequest(group_by=["tenant"]))
        assert [(r.tenant, r.requests) for r in usage.rows] == [("acme", 4)]
        async with http(handle, "tb") as globex:
            reply = await globex.get("/trails")
            assert ids(reply.json()["trails"]) == ["b-2", "a-2"]
            assert (await globex.get("/trails/a-1")).status_code == 404
            assert (await globex.get("/export", params={"tenant": "acme"})).content == b""
        # The roles of the agent: an operator reads no trail, no credential reads nothing.
        assert await code_of(stub(handle, "op").ListTrails(q.ListTrailsRequest())) == \
            grpc.StatusCode.PERMISSION_DENIED
        async with http(handle, None) as anonymous:
            assert (await anonymous.get("/trails")).status_code == 401
        # Control is each agent's: the fleet answers 501, even to an admin.
        async with http(handle, "adm") as admin:
            reply = await admin.delete("/trails/a-1")
            assert reply.status_code == 501, reply.text
            assert reply.json()["error"]["code"] == "UNIMPLEMENTED"
        assert handle.counters["auth_permission_denied"] == 1
        assert handle.counters["auth_unauthenticated"] == 1


async def test_page_tokens_serve_only_their_caller_and_filters(tmp_path: Path) -> None:
    async with fleet(tmp_path) as (handle, _, _):
        first = await stub(handle, "aud").ListTrails(q.ListTrailsRequest(page_size=2))
        token = first.next_page_token
        assert token and "b-" not in token  # opaque: sealed, not a readable position
        # Another caller, or the same caller with other filters: the same answer as garbage.
        for name, request in (("adm", q.ListTrailsRequest(page_size=2, page_token=token)),
                              ("ta", q.ListTrailsRequest(page_size=2, page_token=token)),
                              ("aud", q.ListTrailsRequest(page_size=2, page_token=token,
                                                          tenant="globex"))):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub(handle, name).ListTrails(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert "page_token is not one" in str(refused.value.details())
        second = await stub(handle, "aud").ListTrails(
            q.ListTrailsRequest(page_size=2, page_token=token))
        assert ids(second.trails) == ["b-2", "a-2"]


async def test_watch_streams_what_the_consumer_stores_once(tmp_path: Path) -> None:
    async with fleet(tmp_path) as (handle, store, _):
        watch = stub(handle, "ta").WatchTrails(q.WatchTrailsRequest(replay=True))
        replayed = [await watch.read() for _ in range(4)]
        assert [r.trail.request_id for r in replayed] == ["a-1", "b-1", "a-3", "b-3"]
        later = await pod_records(tmp_path / "later", "c", [
            ("c-1", "globex", "bob", "big", 403, 1, 0, 6),
            ("c-2", "acme", "dave", "big", 403, 1, 0, 7)])
        # The consumer's insert runs in a worker thread; it is re-delivered once (Kafka is
        # at-least-once): the watch hears of each record once, and of its tenant's only.
        await asyncio.to_thread(store.insert, later)
        await asyncio.to_thread(store.insert, later)
        got = await asyncio.wait_for(watch.read(), 10)
        assert (got.trail.request_id, got.kind) == ("c-2", q.WATCH_EVENT_KIND_FINAL)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(watch.read())), 0.5)
        watch.cancel()


async def test_every_call_is_an_access_record_in_a_log_that_verifies(tmp_path: Path) -> None:
    api_dir = tmp_path / "api"
    async with fleet(tmp_path) as (handle, _, _):
        await stub(handle, "ta").ListTrails(q.ListTrailsRequest(user="alice"))
        await code_of(stub(handle, "ta").GetTrail(q.GetTrailRequest(request_id="a-2")))
        async with http(handle, "aud") as c:
            await c.get("/aggregates", params={"group_by": "day"})
        await code_of(stub(handle, "op").ExportTrails(q.ExportTrailsRequest()).read())

        def access() -> list[dict[str, Any]]:
            return [r for r in (orjson.loads(p) for _, p in handle.records.wal.replay())
                    if r.get("type") == "access"]

        await until(lambda: len(access()) >= 4, "access records durable")
        calls = [(r["subject"], r["role"], r["tenant"], r["method"], r["transport"],
                  r.get("status"), r.get("result_count")) for r in access()
                 if r.get("outcome") != "refused"]
        assert calls[:3] == [
            ("ta", "tenant-auditor", "acme", "ListTrails", "grpc", "OK", 3),
            ("ta", "tenant-auditor", "acme", "GetTrail", "grpc", "NOT_FOUND", 0),
            ("aud", "auditor", "", "GetAggregates", "http", "OK", 1)]
        refused = [r for r in access() if r.get("outcome") == "refused"]
        assert [(r["method"], r["reason"]) for r in refused] == \
            [("ExportTrails", "permission_denied")]
    # Stopped: the API's log ends with a signed checkpoint, and verifies.
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "vllm_audit_agent.cli", "verify",
                             str(api_dir / "records"), "--public-key",
                             str(api_dir / PUBLIC_KEY_NAME)], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_the_operator_is_refused_every_read_route(tmp_path: Path) -> None:
    async with fleet(tmp_path) as (handle, _, _):
        got = {name: await code_of(stub(handle, name).GetAggregates(q.AggregatesRequest()))
               for name in ROLES}
        assert got["op"] == grpc.StatusCode.PERMISSION_DENIED
        assert {n for n, c in got.items() if c == grpc.StatusCode.OK} == {"aud", "ta", "tb", "adm"}


def test_usage_metrics_keep_the_biggest_tenants_and_models_and_sum_the_rest() -> None:
    rows = [{"tenant": f"t{i}", "model": f"m{i % 3}", "requests": 100 - i, "input_tokens": 1000,
             "output_tokens": 0, "errors": 0} for i in range(10)]
    prices = PriceTable({"m0": Price(1.0, 0.0)})
    series = bounded(rows, prices, max_tenants=2, max_models=1)
    assert set(series) == {("t0", "m0"), ("t1", OTHER), (OTHER, "m0"), (OTHER, OTHER)}
    assert series[(OTHER, OTHER)]["requests"] == sum(100 - i for i in range(2, 10) if i % 3)
    assert series[(OTHER, "m0")]["cost"] == 3.0  # t3, t6, t9 at 1k input tokens each
