"""The audit of the audit, tried as a hostile reader and a hostile local user would: no reader
can erase evidence or pass unrecorded. Real agents, real gRPC and HTTP, real tokens, the real
CLI's export and verify."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tests.support.agent_harness import Hook, agent, agent_config, query, until
from tests.support.agent_harness import tokens_file as harness_tokens_file
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.server import AgentHandle, running_agent

REPO = Path(__file__).resolve().parents[2]
TOKENS = {"ta": ("tenant-auditor", "acme"), "tb": ("tenant-auditor", "globex"),
          "aud": ("auditor", None)}


def tokens_file(tmp: Path) -> Path:
    """Each entry's token is its name + '-secret'."""
    return harness_tokens_file(tmp, TOKENS)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def exported(tmp: Path) -> list[dict[str, Any]]:
    """Every record of the stopped agent's record log, through the CLI."""
    out = tmp / "export.jsonl"
    done = cli("export", "--data-dir", str(tmp / "data"), "--format", "jsonl",
               "--output-file", str(out))
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def verified(tmp: Path) -> subprocess.CompletedProcess[str]:
    data = tmp / "data"
    return cli("verify", str(data / "records"), "--public-key", str(next(data.glob("*.pub"))))


async def seed(handle: AgentHandle, n: int, tenant: str = "acme") -> None:
    async with Hook(handle.state.config.ingest_socket) as hook:
        for i in range(n):
            # A 4xx response makes the trail final at once (no engine half expected).
            await hook.send(i + 1, pb.Event(time_unix_nano=10**15 + i, request_id=f"r{i}",
                                            http=pb.HttpRequest(tenant=tenant, user=f"u{i}",
                                                                model="m", status_code=403)))
    await until(lambda: handle.state.records.durable_seq >= n, "records durable")


async def stats_until_exhausted(stub: Any, limit: int) -> tuple[int, grpc.aio.AioRpcError]:
    """GetStats until a call is refused RESOURCE_EXHAUSTED (at most `limit` calls): how many
    were answered, and the refusal."""
    for answered in range(limit):
        try:
            await stub.GetStats(q.StatsRequest())
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            return answered, exc
    raise AssertionError(f"{limit} calls answered, none refused")


def access_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == "access"]


async def test_an_oversized_filter_flood_erases_nothing_and_is_on_record(tmp_path: Path) -> None:
    """The attack of the review: a tenant-auditor sent 3 MiB `user` filters until retention
    expired every request record. Now each is refused before it runs, the flood is one
    record (plus one closing count), and every request record is still there."""
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path),
                     record_log_max_bytes=400_000) as (handle, _):
        await seed(handle, 20)
        stub = query(handle, "ta-secret")
        for _ in range(8):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListTrails(q.ListTrailsRequest(user="x" * (3 << 20)))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "user is 3145728 bytes; at most 256" in str(refused.value.details())
        assert handle.state.counters["auth_invalid_argument"] == 8
        assert handle.state.records.counters["expired_segments_size"] == 0
        assert handle.state.records.access_bytes < 10_000
    records = exported(tmp_path)
    assert sum(1 for r in records if r["type"] == "request") == 20
    refusals = [r for r in access_records(records) if r.get("outcome") == "refused"]
    assert [(r["reason"], r["count"], r["aggregated"]) for r in refusals] == [
        ("invalid_argument", 1, False), ("invalid_argument", 7, True)]
    assert refusals[0]["peer"] == "ipv4:127.0.0.1" and refusals[0]["token_id"]
    assert verified(tmp_path).returncode == 0


async def test_a_spent_access_budget_refuses_queries_and_keeps_the_evidence(tmp_path: Path
                                                                             ) -> None:
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path),
                     record_log_max_bytes=300_000, access_records_max_bytes=12_000,
                     wal_segment_bytes=4096) as (handle, _):
        await seed(handle, 30)
        stub = query(handle, "aud-secret")
        # bounded: the budget holds ~30 access records
        answered, refused = await stats_until_exhausted(stub, 400)
        assert 10 < answered < 400
        assert "never push evidence out" in str(refused.details())
        # Over HTTP the same budget answers 429; liveness stays open.
        http = f"http://{handle.http_address}/api/v1"
        async with httpx.AsyncClient(headers={"Authorization": "Bearer aud-secret"}) as c:
            assert (await c.get(f"{http}/stats")).status_code == 429
            assert (await c.get(f"{http}/health")).status_code == 200
        assert handle.state.counters["auth_access_budget"] >= 2
        # Request records are never what retention frees for access records.
        assert handle.state.records.counters["expired_segments_size"] == 0
    assert sum(1 for r in exported(tmp_path) if r["type"] == "request") == 30
    assert verified(tmp_path).returncode == 0


async def test_every_refusal_is_a_record_with_its_peer_and_a_flood_is_one(tmp_path: Path) -> None:
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path)) as (handle, _):
        bad = query(handle, "not-a-token")
        for _ in range(200):
            with pytest.raises(grpc.aio.AioRpcError):
                await bad.GetStats(q.StatsRequest())
        http = f"http://{handle.http_address}/api/v1"
        async with httpx.AsyncClient() as c:
            assert (await c.get(f"{http}/trails")).status_code == 401
            forbidden = await c.put(f"{http}/level", json={"level": "off"},
                                    headers={"Authorization": "Bearer ta-secret"})
            assert forbidden.status_code == 403
            # Two Authorization headers (right, then wrong) were accepted; now a 400.
            twice = await c.get(f"{http}/trails", headers=[
                ("Authorization", "Bearer aud-secret"), ("Authorization", "Bearer wrong")])
            assert twice.status_code == 400 and "more than one Authorization" in twice.text
            # Authenticated but malformed: on record too.
            unknown = await c.get(f"{http}/trails", params={"colour": "red"},
                                  headers={"Authorization": "Bearer aud-secret"})
            assert unknown.status_code == 400
        # Past 20 failed credentials a host backs off (the 21st blocks it): refused before its
        # token is looked at.
        assert handle.state.counters["auth_unauthenticated"] == 21 + 1  # gRPC's host, HTTP's
        assert handle.state.counters["auth_backoff"] == 179
        with pytest.raises(grpc.aio.AioRpcError) as waiting:
            await query(handle, "aud-secret").GetStats(q.StatsRequest())  # same host: waits
        assert waiting.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many failed credentials from ipv4:127.0.0.1: retry in" in str(
            waiting.value.details())
    refusals = [r for r in access_records(exported(tmp_path)) if r.get("outcome") == "refused"]
    grpc_flood = [r for r in refusals if r["transport"] == "grpc"]
    by_count: dict[str, int] = {}
    for r in grpc_flood:
        by_count[r["reason"]] = by_count.get(r["reason"], 0) + r["count"]
    assert by_count == {"unauthenticated": 21, "backoff": 180} and len(grpc_flood) == 4
    assert all(r["peer"] == "ipv4:127.0.0.1" for r in grpc_flood)
    by_reason = {r["reason"]: r for r in refusals if r["transport"] == "http"}
    assert by_reason["unauthenticated"]["peer"] == "127.0.0.1"
    assert by_reason["permission_denied"]["token_id"] and \
        by_reason["permission_denied"]["method"] == "SetAuditLevel"
    assert {r["detail"] for r in refusals if r["reason"] == "invalid_argument"} >= {
        "more than one Authorization header; send exactly one"}
    assert any("colour" in r["detail"] for r in refusals if r["reason"] == "invalid_argument")
    assert verified(tmp_path).returncode == 0


async def test_a_page_token_is_sealed_to_its_caller_and_filters(tmp_path: Path) -> None:
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path)) as (handle, _):
        await seed(handle, 6, tenant="acme")
        acme, globex = query(handle, "ta-secret"), query(handle, "tb-secret")
        first = await acme.ListTrails(q.ListTrailsRequest(page_size=2))
        token = first.next_page_token
        assert len(first.trails) == 2 and token
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert b"s:" not in raw and len(raw) == 12 + 8 + 16  # nonce, sealed position, tag
        second = await acme.ListTrails(q.ListTrailsRequest(page_size=2, page_token=token))
        assert {t.request_id for t in second.trails}.isdisjoint(
            {t.request_id for t in first.trails})
        for stub, request in ((globex, q.ListTrailsRequest(page_size=2, page_token=token)),
                              (acme, q.ListTrailsRequest(user="u1", page_token=token))):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListTrails(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_watch_is_on_record_from_the_moment_it_opens(tmp_path: Path) -> None:
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path)) as (handle, _):
        stream = query(handle, "aud-secret").WatchTrails(q.WatchTrailsRequest())
        reader = stream.__aiter__()
        first = asyncio.ensure_future(reader.__anext__())
        # On record as soon as it is open, before it has sent anything.
        await until(lambda: handle.state.counters["meta_audit_records"] >= 1, "watch open")
        await seed(handle, 2)
        await asyncio.wait_for(first, 30)
        await asyncio.wait_for(reader.__anext__(), 30)
        stream.cancel()
        await until(lambda: handle.state.counters["meta_audit_records"] >= 2, "watch closed")
    watches = [r for r in access_records(exported(tmp_path)) if r["method"] == "WatchTrails"]
    assert watches[0]["status"] == "STREAMING" and watches[0]["outcome"] == "open"
    assert watches[-1]["status"] != "STREAMING" and watches[-1]["result_count"] == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
async def test_under_umask_000_no_other_uid_can_reach_the_ingest_socket(tmp_path: Path) -> None:
    sockets = tmp_path / "run" / "vllm-audit"  # made by the agent
    os.chmod(tmp_path, 0o755)  # others may reach the directory the agent makes, not beyond
    old = os.umask(0)
    try:
        config = agent_config(tmp_path, ingest_socket=sockets / "ingest.sock")
        async with running_agent(config):
            assert stat.S_IMODE(sockets.stat().st_mode) == 0o750
            assert stat.S_IMODE((sockets / "ingest.sock").stat().st_mode) == 0o660
            probe = await asyncio.create_subprocess_exec(
                sys.executable, "-c",
                "import os, socket, sys\n"
                "os.setgid(65534); os.setuid(65534)\n"
                "s = socket.socket(socket.AF_UNIX)\n"
                "try:\n    s.connect(sys.argv[1]); print('connected')\n"
                "except PermissionError:\n    print('refused')\n",
                str(sockets / "ingest.sock"), stdout=asyncio.subprocess.PIPE)
            out, _ = await probe.communicate()
            assert out.decode().strip() == "refused"
    finally:
        os.umask(old)


async def test_a_world_writable_socket_directory_is_refused_at_start(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(ValueError, match="writable by every user"):
        async with running_agent(agent_config(tmp_path, ingest_socket=shared / "i.sock")):
            pass
    assert not (shared / "i.sock").exists()


async def test_a_token_over_its_query_rate_is_refused_and_on_record(tmp_path: Path) -> None:
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path),
                     query_rate_per_token=5.0) as (handle, _):
        stub = query(handle, "aud-secret")
        answered, refused = await stats_until_exhausted(stub, 100)  # bursts of 10 at 5/s
        assert 10 <= answered < 20 and "over its query rate" in str(refused.details())
        # Another token has its own bucket.
        await query(handle, "tb-secret").ListTrails(q.ListTrailsRequest())
        assert handle.state.counters["auth_rate_limited"] == 1
    limited = [r for r in access_records(exported(tmp_path)) if r.get("reason") == "rate_limited"]
    assert len(limited) == 1 and limited[0]["token_id"]
