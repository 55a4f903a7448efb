"""GetAggregates on a real agent: requests, tokens, errors and cost by tenant, user, model and
day, over gRPC and the JSON HTTP API alike, priced from a real price-table file, scoped to a
tenant-auditor's tenant, refused to roles without read access and meta-audited."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest

from tests.agent.test_auth import ROLES, code_of, tokens_file
from tests.support.agent_harness import Hook, agent, query, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.usage import load_price_table
from vllm_audit_agent.server import AgentHandle

REPO = Path(__file__).resolve().parents[2]
DAY_MS = 86_400_000
T0_MS = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
#: (id, tenant, user, model, status, prompt tokens, completion tokens, day offset)
TRAILS = [
    ("a1", "acme", "alice", "big", 403, 1000, 0, 0),
    ("a2", "acme", "alice", "big", 500, 2000, 1000, 1),
    ("a3", "acme", "carol", "small", 401, 4000, 2000, 1),
    ("g1", "globex", "bob", "big", 429, 500, 500, 0),
    ("g2", "globex", "bob", "unpriced", 403, 10, 20, 0),
]
PRICES = """\
currency: EUR
models:
  big: {input_per_1k: 1.0, output_per_1k: 2.0}
  small: {input_per_1k: 0.5, output_per_1k: 0.25}
"""


async def seed(handle: AgentHandle) -> None:
    async with Hook(handle.state.config.ingest_socket) as hook:
        for i, (rid, tenant, user, model, status, p, c, day) in enumerate(TRAILS):
            await hook.send(i + 1, pb.Event(
                time_unix_nano=(T0_MS + day * DAY_MS + i) * 10**6, request_id=rid,
                http=pb.HttpRequest(tenant=tenant, user=user, model=model, status_code=status,
                                    prompt_tokens=p, completion_tokens=c)))
    await until(lambda: handle.state.records.durable_seq >= len(TRAILS), "records durable")


def rows(response: q.AggregatesResponse) -> list[dict[str, Any]]:
    return [{k: v for k, v in (("tenant", r.tenant), ("user", r.user), ("model", r.model),
                               ("day", r.day), ("requests", r.requests),
                               ("input_tokens", r.input_tokens),
                               ("output_tokens", r.output_tokens), ("errors", r.errors),
                               ("cost", round(r.cost, 6)),
                               ("unpriced_requests", r.unpriced_requests)) if v}
            for r in response.rows]


@pytest.fixture
def price_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(PRICES)
    return path


async def test_usage_by_tenant_model_and_day_priced_over_both_transports(
        tmp_path: Path, price_file: Path) -> None:
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path),
                     price_table_file=price_file) as (handle, _):
        await seed(handle)
        stub = query(handle, "aud-secret")
        by_tenant = await stub.GetAggregates(q.AggregatesRequest(group_by=["tenant"]))
        assert by_tenant.currency == "EUR"
        # acme: big 3000 in/1000 out -> 3 + 2; small 4000/2000 -> 2 + 0.5. globex: big
        # 500/500 -> 0.5 + 1; its "unpriced" model adds nothing and is counted as such.
        assert rows(by_tenant) == [
            {"tenant": "acme", "requests": 3, "input_tokens": 7000, "output_tokens": 3000,
             "errors": 3, "cost": 7.5},
            {"tenant": "globex", "requests": 2, "input_tokens": 510, "output_tokens": 520,
             "errors": 2, "cost": 1.5, "unpriced_requests": 1},
        ]
        by_day = await stub.GetAggregates(q.AggregatesRequest(
            group_by=["day", "model"], tenant="acme"))
        assert rows(by_day) == [
            {"day": "2023-11-14", "model": "big", "requests": 1, "input_tokens": 1000,
             "errors": 1, "cost": 1.0},
            {"day": "2023-11-15", "model": "big", "requests": 1, "input_tokens": 2000,
             "output_tokens": 1000, "errors": 1, "cost": 4.0},
            {"day": "2023-11-15", "model": "small", "requests": 1, "input_tokens": 4000,
             "output_tokens": 2000, "errors": 1, "cost": 2.5},
        ]
        window = await stub.GetAggregates(q.AggregatesRequest(
            group_by=["user"], since_unix_ms=T0_MS + DAY_MS))
        assert [(r["user"], r["requests"]) for r in rows(window)] == [("alice", 1), ("carol", 1)]
        # The HTTP route is the same call: the same rows as JSON.
        headers = {"Authorization": "Bearer aud-secret"}
        async with httpx.AsyncClient(base_url=f"http://{handle.http_address}/api/v1",
                                     headers=headers, timeout=30) as c:
            reply = await c.get("/aggregates", params={"group_by": "day,model",
                                                       "tenant": "acme"})
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert [(r["day"], r["model"], r["requests"]) for r in body["rows"]] == \
                [(r["day"], r["model"], r["requests"]) for r in rows(by_day)]
            bad = await c.get("/aggregates", params={"group_by": "tenant,planet"})
            assert bad.status_code == 400 and "group_by" in bad.json()["error"]["message"]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetAggregates(q.AggregatesRequest(group_by=["tenant", "tenant"]))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Every call is on record (the refused one with its status), with how many groups
        # each returned.
        await until(lambda: len(aggregate_calls(handle)) >= 5, "access records durable")
        assert [(r["subject"], r["transport"], r["status"], r["result_count"],
                 r["request"].get("group_by")) for r in aggregate_calls(handle)] == [
            ("aud", "grpc", "OK", 2, ["tenant"]), ("aud", "grpc", "OK", 3, ["day", "model"]),
            ("aud", "grpc", "OK", 2, ["user"]), ("aud", "http", "OK", 3, ["day", "model"]),
            ("aud", "grpc", "INVALID_ARGUMENT", 0, ["tenant", "tenant"])]


def aggregate_calls(handle: AgentHandle) -> list[dict[str, Any]]:
    """The access records of GetAggregates calls that ran, durable so far, oldest first."""
    return [r for r in (orjson.loads(p) for _, p in handle.state.records.wal.replay())
            if r.get("type") == "access" and r.get("method") == "GetAggregates"
            and r.get("outcome") != "refused"]


async def test_a_tenant_auditor_sums_only_its_tenant(tmp_path: Path, price_file: Path) -> None:
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path),
                     price_table_file=price_file) as (handle, _):
        await seed(handle)
        acme = query(handle, "ta-secret")
        mine = rows(await acme.GetAggregates(q.AggregatesRequest(group_by=["tenant", "user"])))
        assert [(r["tenant"], r["user"], r["requests"]) for r in mine] == \
            [("acme", "alice", 2), ("acme", "carol", 1)]
        # Asking for another tenant matches nothing (no error that would confirm it exists).
        assert rows(await acme.GetAggregates(q.AggregatesRequest(tenant="globex"))) == []
        everything = rows(await acme.GetAggregates(q.AggregatesRequest()))
        assert everything[0]["requests"] == 3
        # Usage is audit data: the operator (stats, level) may not read it.
        got = {name: await code_of(query(handle, f"{name}-secret").GetAggregates(
            q.AggregatesRequest())) for name in ROLES}
        assert got == {"aud": grpc.StatusCode.OK, "ta": grpc.StatusCode.OK,
                       "tb": grpc.StatusCode.OK, "op": grpc.StatusCode.PERMISSION_DENIED,
                       "adm": grpc.StatusCode.OK}


def test_a_price_table_with_a_typo_fails_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"models": {"big": {"input_per_1k": -1}}}))
    with pytest.raises(ValueError, match=r"models.big.input_per_1k must be a number >= 0"):
        load_price_table(path)
    path.write_text(json.dumps({"model": {}}))
    with pytest.raises(ValueError, match="expected the keys currency, models, default"):
        load_price_table(path)


async def test_the_cli_prints_the_aggregates(tmp_path: Path, price_file: Path) -> None:
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path),
                     price_table_file=price_file) as (handle, _):
        await seed(handle)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vllm_audit_agent.cli", "query", "aggregates",
            "--address", handle.query_address, "--token", "tb-secret", "--group-by", "model",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        answer = json.loads(out)
        assert answer["currency"] == "EUR"
        assert [(r["model"], r["requests"], r["unpriced_requests"]) for r in answer["rows"]] == \
            [("big", 1, 0), ("unpriced", 1, 1)]  # globex's alone: the token's tenant
