"""The management API on a real agent: JSON over its HTTP port (real requests with httpx) and
the same calls over gRPC, with the same tokens, roles, tenant scope, refusal counters and
meta-audit; delete and clear act on the query store only (the record log is unchanged and
`verify` passes); watchers hear of revisions, evictions and deletions."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tests.agent.test_auth import ROLES, code_of, tokens_file
from tests.support.agent_harness import (
    Hook,
    admin_token,
    agent,
    control,
    lifecycle,
    published_keys,
    query,
    until,
)
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.server import AgentHandle

REPO = Path(__file__).resolve().parents[2]
#: 2023-11-14T22:13:20Z; trail i is created i minutes later.
T0_MS = 1_700_000_000_000
MINUTE_MS = 60_000
#: (id, tenant, user, status, client X-Request-Id): 4xx responses are final at once.
TRAILS = [("r0", "acme", "alice", 403, "x-0"), ("r1", "globex", "bob", 403, ""),
          ("r2", "acme", "carol", 401, "x-2"), ("r3", "globex", "alice", 403, "")]


def http_event(rid: str, tenant: str, user: str, status: int, client_id: str, minute: int
               ) -> pb.Event:
    return pb.Event(time_unix_nano=(T0_MS + minute * MINUTE_MS) * 10**6, request_id=rid,
                    http=pb.HttpRequest(tenant=tenant, user=user, model="m", status_code=status,
                                        client_request_id=client_id))


async def seed(handle: AgentHandle) -> None:
    """r0..r3 (HTTP trails) and one offline structured-output trail `0-00000009` (xgrammar,
    model m2), all final; waits until their records are in the record log."""
    async with Hook(handle.state.config.ingest_socket) as hook:
        for i, trail in enumerate(TRAILS):
            await hook.send(i + 1, http_event(*trail, minute=i))
        t = (T0_MS + 4 * MINUTE_MS) * 10**6
        await hook.send(5, pb.Event(time_unix_nano=t, request_id="0-00000009",
                                    grammar_compiled=pb.GrammarCompiled(backend="xgrammar")),
                        lifecycle("0-00000009", pb.LIFECYCLE_PHASE_FINISHED, t,
                                  finish_reason="stop"), model="m2")
    await until(lambda: handle.state.records.durable_seq >= 5, "5 records durable")


def client(handle: AgentHandle, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=f"http://{handle.http_address}/api/v1", headers=headers,
                             timeout=30)


def ids(body: dict[str, Any]) -> list[str]:
    return [t["request_id"] for t in body["trails"]]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


async def test_each_role_over_http_and_grpc_with_the_same_counters(tmp_path: Path) -> None:
    routes: dict[str, tuple[str, str, dict[str, Any], set[str]]] = {
        # name: (method, path, request kwargs, roles allowed)
        "health": ("GET", "/health", {}, set(ROLES)),
        "stats": ("GET", "/stats", {}, {"aud", "op", "adm"}),
        "list": ("GET", "/trails", {}, {"aud", "ta", "tb", "adm"}),
        "get": ("GET", "/trails/r0", {}, {"aud", "ta", "tb", "adm"}),
        "export": ("GET", "/export", {}, {"aud", "ta", "tb", "adm"}),
        "delete": ("DELETE", "/trails/no-such-trail", {}, {"adm"}),
        "clear": ("POST", "/clear", {"json": {}}, {"adm"}),  # unconfirmed: 400 when allowed
        "level": ("PUT", "/level", {"json": {"level": "summary"}}, {"op", "adm"}),
    }
    allowed_status = {"get": {"tb": 404}, "delete": {"adm": 404}, "clear": {"adm": 400}}
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path)) as (handle, _):
        await seed(handle)
        counters = handle.state.counters
        denied = 0
        for name in ROLES:
            async with client(handle, f"{name}-secret") as c:
                for route, (method, path, kw, allowed) in routes.items():
                    reply = await c.request(method, path, **kw)
                    if name in allowed:
                        want = allowed_status.get(route, {}).get(name, 200)
                        assert reply.status_code == want, (name, route, reply.text)
                    else:
                        denied += 1
                        assert reply.status_code == 403, (name, route, reply.text)
                        error = reply.json()["error"]
                        assert error["code"] == "PERMISSION_DENIED"
                        assert f"{name!r} has role {ROLES[name][0]}" in error["message"]
        assert counters["auth_permission_denied"] == denied == 16
        # No credential, or one the agent does not know: 401 with a JSON reason, every route.
        for token in (None, "not-a-token"):
            async with client(handle, token) as c:
                for method, path, kw, _ in routes.values():
                    reply = await c.request(method, path, **kw)
                    assert reply.status_code == 401, (token, path)
                    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
                    message = reply.json()["error"]["message"]
                    assert ("needs a credential: send an 'Authorization: Bearer <token>' header"
                            in message) if token is None else "not one this agent knows" in message
        assert counters["auth_unauthenticated"] == 2 * len(routes)
        # The new RPCs over gRPC: the same roles, the same counters.
        for name in ROLES:
            token = f"{name}-secret"
            export = query(handle, token).ExportTrails(q.ExportTrailsRequest())
            got = [await code_of(export.read()),
                   await code_of(control(handle, token).DeleteTrail(
                       q.DeleteTrailRequest(request_id="no-such-trail"))),
                   await code_of(control(handle, token).ClearTrails(q.ClearTrailsRequest()))]
            reader = name in {"aud", "ta", "tb", "adm"}
            ok, denied_code = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED
            assert got == [ok if reader else denied_code,
                           grpc.StatusCode.NOT_FOUND if name == "adm" else denied_code,
                           grpc.StatusCode.INVALID_ARGUMENT if name == "adm" else denied_code
                           ], name
        assert counters["auth_permission_denied"] == 16 + 1 + 4 + 4


async def test_a_tenant_auditor_reads_only_its_tenant_over_http(tmp_path: Path) -> None:
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path)) as (handle, _):
        await seed(handle)
        async with client(handle, "ta-secret") as acme:
            async def listed(**params: str) -> list[str]:
                reply = await acme.get("/trails", params=params)
                assert reply.status_code == 200, reply.text
                return ids(reply.json())

            assert await listed() == ["r2", "r0"]  # newest first
            assert await listed(tenant="acme") == ["r2", "r0"]
            assert await listed(tenant="globex") == []
            assert await listed(user="alice") == ["r0"]  # globex's alice stays hidden
            assert await listed(x_request_id="x-0") == ["r0"]
            for hidden in ("r1", "r3", "0-00000009", "nothing"):
                reply = await acme.get(f"/trails/{hidden}")
                assert reply.status_code == 404
                # The same answer as for a trail that does not exist: nothing leaks.
                assert reply.json()["error"]["message"] == f"no trail for request id {hidden!r}"
            exported = (await acme.get("/export")).text.splitlines()
            assert [json.loads(line)["trail_id"] for line in exported] == ["r0", "r2"]
            assert (await acme.get("/export", params={"tenant": "globex"})).text == ""
        async with client(handle, "aud-secret") as auditor:
            everything = (await auditor.get("/trails")).json()
            assert ids(everything) == ["0-00000009", "r3", "r2", "r1", "r0"]


async def test_filters_and_pagination_agree_with_grpc(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _):
        await seed(handle)
        iso = dt.datetime.fromtimestamp((T0_MS + MINUTE_MS) / 1000, dt.UTC).isoformat()
        cases: list[tuple[dict[str, str], dict[str, Any], list[str]]] = [
            ({"user": "alice"}, {"user": "alice"}, ["r0", "r3"]),
            ({"tenant": "globex"}, {"tenant": "globex"}, ["r1", "r3"]),
            ({"model": "m2"}, {"model": "m2"}, ["0-00000009"]),
            ({"state": "finished"}, {"state": q.TRAIL_STATE_FINISHED}, ["0-00000009"]),
            ({"state": "TRAIL_STATE_FAILED"}, {"state": q.TRAIL_STATE_FAILED},  # refused: 4xx
             ["r0", "r1", "r2", "r3"]),
            ({"state": "aborted"}, {"state": q.TRAIL_STATE_ABORTED}, []),
            ({"backend": "xgrammar"}, {"grammar_backend": "xgrammar"}, ["0-00000009"]),
            ({"structured_only": "true"}, {"structured_only": True}, ["0-00000009"]),
            ({"client_request_id": "x-2"}, {"client_request_id": "x-2"}, ["r2"]),
            ({"x_request_id": "x-2"}, {"client_request_id": "x-2"}, ["r2"]),
            ({"since": iso, "until": str((T0_MS + 3 * MINUTE_MS) // 1000)},
             {"since_unix_ms": T0_MS + MINUTE_MS, "until_unix_ms": T0_MS + 3 * MINUTE_MS},
             ["r1", "r2"]),
        ]
        async with client(handle, admin_token(handle)) as c:
            for params, grpc_filter, want in cases:
                reply = await c.get("/trails", params=params)
                assert reply.status_code == 200, (params, reply.text)
                page = await query(handle).ListTrails(q.ListTrailsRequest(**grpc_filter))
                # The cases name trails oldest first; a listing is newest first.
                assert ids(reply.json()) == [t.request_id for t in page.trails] == want[::-1], \
                    params
            # Cursor pagination: pages of 2, following next_page_token to the end.
            seen: list[str] = []
            params = {"page_size": "2"}
            while True:
                body = (await c.get("/trails", params=params)).json()
                seen += ids(body)
                if not body["next_page_token"]:
                    break
                params = {"page_size": "2", "page_token": body["next_page_token"]}
            assert seen == ["0-00000009", "r3", "r2", "r1", "r0"]
            # The record form: enums by name, 64-bit integers as numbers.
            r0 = (await c.get("/trails/r0")).json()
            assert r0["summary"]["state"] == "TRAIL_STATE_FAILED"
            assert r0["summary"]["created_unix_ms"] == T0_MS
            assert r0["events"] == [] and r0["events_total"] == 1
            # Events, paged.
            paged = (await c.get("/trails/0-00000009",
                                 params={"events": "true", "event_limit": "1"})).json()
            assert paged["events_total"] == 2 and paged["next_event_offset"] == 1
            assert list(paged["events"][0]) == ["time_unix_nano", "request_id",
                                                "grammar_compiled"]
            rest = (await c.get("/trails/0-00000009",
                                params={"events": "true", "event_offset": "1"})).json()
            assert rest["next_event_offset"] == 0 and "lifecycle" in rest["events"][0]
            # Stats.
            stats = (await c.get("/stats")).json()
            assert stats["trails_finished"] == 5 and stats["audit_level"] == "AUDIT_LEVEL_SUMMARY"
            # Export: the records as the record log holds them (the Kafka value), filtered.
            lines = (await c.get("/export", params={"user": "alice"})).text.splitlines()
            records = [json.loads(line) for line in lines]
            assert [r["trail_id"] for r in records] == ["r0", "r3"]
            assert all(r["type"] == "request" and r["hash"] and r["seq"] for r in records)
            stream = query(handle).ExportTrails(q.ExportTrailsRequest(user="alice"))
            via_grpc = [line async for chunk in stream for line in chunk.records]
            assert [line.decode() for line in via_grpc] == lines


async def test_bad_input_gets_a_400_naming_what_was_wrong(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _):
        await seed(handle)
        async with client(handle, admin_token(handle)) as c:
            bad: list[tuple[str, str, dict[str, Any], int, str]] = [
                ("GET", "/trails", {"params": {"colour": "red"}}, 400,
                 "unknown query parameter 'colour'"),
                ("GET", "/trails", {"params": {"since": "yesterday"}}, 400,
                 "since: 'yesterday' is not an ISO 8601 time"),
                ("GET", "/export", {"params": {"until": "soon"}}, 400, "until: 'soon'"),
                ("GET", "/trails", {"params": {"page_token": "bogus"}}, 400,
                 "page_token is not one this agent made for this caller"),
                ("GET", "/trails", {"params": {"page_size": "-1"}}, 400, "page_size must be >= 0"),
                ("GET", "/trails", {"params": {"page_size": "ten"}}, 400,
                 "page_size='ten' is not an integer"),
                # Past the field's int32: a 400, never an internal error (it was a 500).
                ("GET", "/trails", {"params": {"page_size": "2147483648"}}, 400,
                 "page_size must be <= 2147483647"),
                ("GET", "/trails", {"params": {"page_size": "1001"}}, 400,
                 "page_size must be between 0 (default 50) and 1000, got 1001"),
                ("GET", "/trails/x", {"params": {"event_offset": "99999999999"}}, 400,
                 "event_offset must be <= 2147483647"),
                ("GET", "/trails", {"params": {"user": "u" * 257}}, 400,
                 "user is 257 bytes; at most 256 are accepted"),
                ("GET", "/trails", {"params": {"state": "done"}}, 400,
                 "state='done' is not one of active, finished"),
                ("GET", "/trails", {"params": [("user", "a"), ("user", "b")]}, 400,
                 "'user' given more than once"),
                ("GET", "/trails", {"params": {"structured_only": "maybe"}}, 400,
                 "structured_only='maybe' is not a boolean"),
                ("GET", "/trails/r0", {"params": {"events": "true", "event_offset": "7"}}, 400,
                 "event_offset 7 is past the trail's 1 events"),
                ("GET", "/stats", {"params": {"verbose": "1"}}, 400,
                 "unknown query parameter 'verbose' for GET /api/v1/stats (known: none)"),
                ("POST", "/clear", {"content": b"{not json"}, 400,
                 "the request body is not valid JSON"),
                ("POST", "/clear", {"json": ["delete-all-trails"]}, 400,
                 "must be a JSON object, got list"),
                ("POST", "/clear", {"json": {"confirm": "yes"}}, 400,
                 "confirm with confirm='delete-all-trails' (got 'yes')"),
                ("POST", "/clear", {"json": {"confirm": True}}, 400, "confirm must be a string"),
                ("POST", "/clear", {"json": {"confirm": "delete-all-trails", "x": 1}}, 400,
                 "unknown field(s) ['x']"),
                ("PUT", "/level", {"json": {"level": "loud"}}, 400,
                 "audit level 'loud' is not one of off, summary"),
                ("GET", "/trails/nothing", {}, 404, "no trail for request id 'nothing'"),
                ("DELETE", "/trails/nothing", {}, 404, "no trail for request id 'nothing'"),
            ]
            for method, path, kw, status, message in bad:
                reply = await c.request(method, path, **kw)
                assert reply.status_code == status, (path, kw, reply.text)
                assert message in reply.json()["error"]["message"], (path, kw, reply.text)
            # Every request gets an answer, also off the map.
            nowhere = await c.get("/no-such-route")
            assert nowhere.status_code == 404
            assert nowhere.json()["error"]["message"] == "no route /api/v1/no-such-route"
            patched = await c.patch("/trails")
            assert patched.status_code == 405 and "GET" in patched.headers["Allow"]
            assert patched.json()["error"]["message"] == "PATCH is not allowed on /api/v1/trails"
            huge = await c.post("/clear", content=b" " * (1 << 20))
            assert huge.status_code == 413 and huge.json()["error"]["code"] == "REQUEST_TOO_LARGE"
        assert (await query(handle).ListTrails(q.ListTrailsRequest())).trails  # nothing cleared
        assert not handle.state.errors


async def test_delete_and_clear_touch_the_query_store_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with agent(tmp_path) as (handle, published), \
            Hook(handle.state.config.ingest_socket, source="open") as hook:
        await seed(handle)
        await published_keys(published, 5)
        # A trail still open (its engine half has not finished): it cannot be deleted.
        await hook.send(1, lifecycle("chatcmpl-open-1a2b3c4d", pb.LIFECYCLE_PHASE_ADDED, 10**18),
                        http_event("open", "acme", "dan", 200, "", minute=9))
        token = admin_token(handle)
        async with client(handle, token) as c:
            before = (await c.get("/export")).text
            assert len(before.splitlines()) == 5
            deleted = await c.delete("/trails/r0")
            assert deleted.status_code == 200, deleted.text
            assert deleted.json()["summary"]["request_id"] == "r0"
            assert (await c.get("/trails/r0")).status_code == 404
            assert (await c.delete("/trails/r0")).status_code == 404
            assert "r0" not in ids((await c.get("/trails")).json())
            assert await code_of(query(handle).GetTrail(q.GetTrailRequest(request_id="r0"))) \
                == grpc.StatusCode.NOT_FOUND
            still_open = await c.delete("/trails/open")
            assert still_open.status_code == 409
            assert "is still open" in still_open.json()["error"]["message"]
            refused = await c.post("/clear", json={})
            assert refused.status_code == 400
            assert "confirm='delete-all-trails'" in refused.json()["error"]["message"]
            assert len(ids((await c.get("/trails")).json())) == 5
            cleared = await c.post("/clear", json={"confirm": "delete-all-trails"})
            assert cleared.json() == {"deleted": 4, "kept_open": 1}
            assert ids((await c.get("/trails")).json()) == ["open"]
            # The record log is unchanged: every record is still exported, the deleted too.
            assert (await c.get("/export")).text == before
        again = await control(handle).ClearTrails(q.ClearTrailsRequest(confirm="delete-all-trails"))
        assert (again.deleted, again.kept_open) == (0, 1)
        assert handle.state.trails.counters["deleted"] == 5
        # The CLI: delete and clear --confirm (clear without it is a usage error).
        await hook.send(2, lifecycle("chatcmpl-open-1a2b3c4d", pb.LIFECYCLE_PHASE_FINISHED,
                                     10**18 + 1, finish_reason="stop"))
        await until(lambda: handle.state.trails.open_trails() == 0, "the open trail final")
        args = ("--address", handle.query_address, "--token", token)
        done = await asyncio.to_thread(cli, "delete", "open", *args)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["summary"]["request_id"] == "open"
        usage = await asyncio.to_thread(cli, "clear", *args)
        assert usage.returncode == 2 and "--confirm" in usage.stderr
        done = await asyncio.to_thread(cli, "clear", "--confirm", *args)
        assert done.returncode == 0 and json.loads(done.stdout)["deleted"] == 0, done.stderr
    # Every call is in the record log, and the chain verifies.
    out = tmp_path / "export.jsonl"
    done = await asyncio.to_thread(cli, "export", "--data-dir", str(data), "--output-file",
                                   str(out))
    assert done.returncode == 0, done.stderr
    log = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["trail_id"] for r in log if r["type"] == "request") == [
        "0-00000009", "open", "r0", "r1", "r2", "r3"]
    access = [(r["method"], r["transport"], r["result_count"], r["subject"])
              for r in log if r["type"] == "access"]
    assert ("DeleteTrail", "http", 1, "local-admin") in access
    assert ("ClearTrails", "http", 4, "local-admin") in access
    assert ("ClearTrails", "grpc", 0, "local-admin") in access
    assert ("DeleteTrail", "grpc", 1, "local-admin") in access  # the CLI's
    assert ("ExportTrails", "http", 5, "local-admin") in access
    # Refused for bad input is still an access, with what was asked.
    unconfirmed = [r for r in log if r["type"] == "access" and r["method"] == "ClearTrails"
                   and r["request"] == {}]
    assert len(unconfirmed) == 1
    verified = await asyncio.to_thread(cli, "verify", str(data / "records"), "--public-key",
                                       str(next(data.glob("*.pub"))))
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_watchers_hear_of_revisions_evictions_and_deletions(tmp_path: Path) -> None:
    async with agent(tmp_path, linger_seconds=0.2, max_trails=3) as (handle, _), \
            Hook(handle.state.config.ingest_socket) as hook:
        watch = query(handle).WatchTrails(q.WatchTrailsRequest())
        events: asyncio.Queue[q.WatchTrailsResponse] = asyncio.Queue()

        async def read() -> None:
            async for item in watch:
                await events.put(item)

        reader = asyncio.create_task(read())

        async def next_event() -> tuple[str, str, int]:
            item = await asyncio.wait_for(events.get(), 10)
            return (q.WatchEventKind.Name(item.kind), item.trail.request_id,
                    item.trail.revision)

        await until(lambda: handle.index is not None and bool(handle.index.watches),
                    "the watch registered")
        # The engine half alone: recorded when its linger passes, then the late HTTP half
        # makes a revision.
        await hook.send(1, lifecycle("chatcmpl-late-1a2b3c4d", pb.LIFECYCLE_PHASE_FINISHED,
                                     10**18, finish_reason="stop"))
        assert await next_event() == ("WATCH_EVENT_KIND_FINAL", "late", 0)
        await hook.send(2, http_event("late", "acme", "eve", 200, "", minute=0))
        assert await next_event() == ("WATCH_EVENT_KIND_REVISED", "late", 1)
        async with client(handle, admin_token(handle)) as c:
            assert (await c.delete("/trails/late")).status_code == 200
        assert await next_event() == ("WATCH_EVENT_KIND_DELETED", "late", 1)
        # Four final trails in a store of three: the oldest is evicted.
        for i in range(4):
            await hook.send(3 + i, http_event(f"e{i}", "acme", "eve", 403, "", minute=i))
            assert await next_event() == ("WATCH_EVENT_KIND_FINAL", f"e{i}", 0)
        assert await next_event() == ("WATCH_EVENT_KIND_EVICTED", "e0", 0)
        watch.cancel()
        reader.cancel()


async def test_one_http_port_serves_probes_metrics_and_the_api(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _), \
            httpx.AsyncClient(base_url=f"http://{handle.http_address}") as c:
        auth = {"Authorization": f"Bearer {admin_token(handle)}"}
        assert (await c.get("/api/v1/trails", headers=auth)).json() == {
            "trails": [], "next_page_token": ""}
        assert (await c.get("/readyz")).status_code == 200
        assert (await c.get("/healthz")).text == "ok\n"
        metrics = await c.get("/metrics")
        assert "vllm_audit_trails_deleted_total 0.0" in metrics.text
        assert 'vllm_audit_query_refused_calls_total{reason="unauthenticated"} 0.0' in metrics.text


async def test_no_plaintext_api_beyond_loopback_without_the_explicit_flag(tmp_path: Path) -> None:
    """Tokens would cross the network in the clear: the API stays off (with the reason), the
    probes and /metrics stay on; --allow-insecure-remote (a mesh that encrypts) turns it on."""
    async with agent(tmp_path / "a", http_address="0.0.0.0:0") as (handle, _):
        port = handle.http_address.rsplit(":", 1)[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            auth = {"Authorization": f"Bearer {admin_token(handle)}"}
            off = await c.get("/api/v1/trails", headers=auth)
            assert off.status_code == 404
            assert "reachable beyond this machine without TLS" in off.json()["error"]["message"]
            assert (await c.delete("/api/v1/trails/x", headers=auth)).status_code == 404
            assert (await c.get("/metrics")).status_code == 200
            assert (await c.get("/readyz")).status_code == 200
    async with agent(tmp_path / "b", http_address="0.0.0.0:0", allow_insecure_remote=True) \
            as (handle, _):
        port = handle.http_address.rsplit(":", 1)[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            on = await c.get("/api/v1/trails",
                             headers={"Authorization": f"Bearer {admin_token(handle)}"})
            assert on.status_code == 200


def test_the_index_agrees_with_the_store_after_deletes_and_clear() -> None:
    import random

    from tests.agent.test_query_scale import MODELS, USERS, all_pages, scan
    from tests.agent.test_query_scale import http as random_http
    from vllm_audit_agent.trails.index import Filter, TrailIndex
    from vllm_audit_agent.trails.store import TrailOpen, TrailStore

    rng = random.Random(11)
    store = TrailStore(max_trails=10_000, max_events=100, linger_seconds=1e9,
                       on_final=lambda t: None)
    index = TrailIndex(store)
    watch = index.watch(Filter())
    for step in range(400):
        batch = pb.Batch(source_id="s", seq=step + 1, events=[
            random_http(f"r{step}", 10**15 + step, rng, rng.choice((200, 403)))])
        store.apply(batch, 1)
    filters = [Filter(), Filter(model=MODELS[0]), Filter(user=USERS[1]),
               Filter(state=q.TRAIL_STATE_ACTIVE)]
    open_ids = {t.summary.request_id for t in store.trails() if not t.published}
    deleted = 0
    for rid in rng.sample([f"r{i}" for i in range(400)], 100):
        if rid in open_ids:
            with pytest.raises(TrailOpen):
                store.delete(rid)
        else:
            store.delete(rid)
            deleted += 1
        assert store.get(rid) is None or rid in open_ids
    for f in filters:
        assert all_pages(index, f, 7) == scan(store, f)[::-1]  # pages: newest first
    kinds = [watch.queue.get_nowait()[0] for _ in range(watch.queue.qsize())]
    assert kinds.count(q.WATCH_EVENT_KIND_DELETED) == deleted
    removed, kept = store.clear()
    assert kept == len(open_ids) == len(store) == len(index) == index.active_count()
    assert removed + deleted == 400 - len(open_ids)
    for f in filters:
        assert all_pages(index, f, 7) == scan(store, f)[::-1]  # pages: newest first
    assert store.counters["deleted"] == 400 - len(open_ids)


async def test_the_api_over_tls_and_mutual_tls_beyond_loopback(tmp_path: Path) -> None:
    """--http-tls: the HTTP port speaks TLS with the gRPC listener's certificate, so the API
    is served on a public address; roles are enforced as over plaintext; with a client CA a
    client certificate is required as well as a token."""
    import ssl

    from tests.agent.test_auth import make_pki

    pki = make_pki(tmp_path)
    tls = {"tls_cert": pki["server.crt"], "tls_key": pki["server.key"], "http_tls": True}
    trust = ssl.create_default_context(cafile=str(pki["ca.crt"]))
    async with agent(tmp_path / "tls", http_address="0.0.0.0:0",
                     auth_tokens_file=tokens_file(tmp_path), **tls) as (handle, _):
        await seed(handle)
        base = f"https://127.0.0.1:{handle.http_address.rsplit(':', 1)[1]}"

        def https(token: str | None) -> httpx.AsyncClient:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.AsyncClient(base_url=base, headers=headers, verify=trust, timeout=30)

        async with https("aud-secret") as c:
            listed = await c.get("/api/v1/trails")
            assert listed.status_code == 200 and len(listed.json()["trails"]) == 5
            assert (await c.delete("/api/v1/trails/r0")).status_code == 403
            assert (await c.get("/readyz")).status_code == 200
        async with https(None) as c:
            assert (await c.get("/api/v1/trails")).status_code == 401
        async with https("adm-secret") as c:
            assert (await c.get("/api/v1/stats")).status_code == 200
        # Plaintext to the TLS port gets no answer it could read.
        async with httpx.AsyncClient(base_url=base.replace("https", "http"), timeout=5) as c:
            with pytest.raises(httpx.HTTPError):
                await c.get("/api/v1/trails", headers={"Authorization": "Bearer aud-secret"})

    async with agent(tmp_path / "mtls", tls_client_ca=pki["ca.crt"], **tls) as (handle, _):
        base = f"https://{handle.http_address}"
        token = {"Authorization": f"Bearer {admin_token(handle)}"}
        with_cert = ssl.create_default_context(cafile=str(pki["ca.crt"]))
        with_cert.load_cert_chain(pki["client.crt"], pki["client.key"])
        async with httpx.AsyncClient(base_url=base, verify=with_cert, timeout=30) as c:
            assert (await c.get("/api/v1/stats", headers=token)).status_code == 200
        async with httpx.AsyncClient(base_url=base, verify=trust, timeout=5) as c:
            with pytest.raises(httpx.HTTPError):  # no client certificate: the handshake fails
                await c.get("/api/v1/stats", headers=token)


def test_http_tls_needs_the_certificate() -> None:
    from vllm_audit_agent.config import AgentConfig

    with pytest.raises(ValueError, match=r"http_tls .* needs tls_cert and tls_key"):
        AgentConfig(http_tls=True)
