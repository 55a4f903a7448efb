"""Retention tiers and erasure on a real agent (in-process, real sockets): prompts and outputs
captured readable are sealed under per-user content keys, erasing one user destroys theirs
(admin only, a signed erasure record in the chain) and content expiry destroys a period's;
the chain verifies throughout and every copy shows the content erased while metadata stays.
(Through a real vLLM: tests/e2e/test_erasure.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson

from tests.support.agent_harness import Hook, agent, control, query, requests_of, tokens_file, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.records.chain import load_public_key
from vllm_audit_agent.records.content import open_fields, open_payloads
from vllm_audit_agent.records.read_only import read_records
from vllm_audit_agent.records.verify import verify_chain
from vllm_audit_agent.server import AgentHandle

ROLES = {"adm": ("admin", None), "aud": ("auditor", None)}
FULL = "prompt=full,output=full,client_ip=hmac"


def http(rid: str, user: str, t: int, policy: str = FULL) -> pb.Event:
    """A 4xx makes the trail final at once (no engine half expected). The hook applied the
    capture policy before sending: under hmac the prompt is a digest, under none empty."""
    readable = policy == FULL
    return pb.Event(time_unix_nano=t, request_id=rid, http=pb.HttpRequest(
        tenant="acme", user=user, model="m", status_code=400,
        prompt=f"secret of {user}" if readable else "hmac-sha256:0f1e",
        output=f"answer to {user}" if readable else "", capture_policy=policy))


def records_of(handle: AgentHandle, kind: str) -> list[dict[str, Any]]:
    return [r for r in map(orjson.loads, read_records(handle.state.config.data_dir / "records"))
            if r["type"] == kind]


def verify(handle: AgentHandle) -> None:
    data = handle.state.config.data_dir
    report = verify_chain(read_records(data / "records"), load_public_key(data / "signing.pub"),
                          allow_unsigned_tail=True, sealed_start=True)
    assert report.intact, report.broken


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_erasing_one_user_leaves_the_chain_and_the_others(tmp_path: Path) -> None:
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path, ROLES)) as (handle, pub):
        async with Hook(handle.state.config.ingest_socket) as hook:
            for i, user in enumerate(("alice", "bob", "carol")):
                await hook.send(i + 1, http(f"r-{user}", user, 10**15 + i,
                                            FULL if user != "carol" else
                                            "prompt=hmac,output=none,client_ip=hmac"))
        await until(lambda: len(requests_of(pub)) >= 3, "3 records published")
        stored = {r["user"]: r for r in records_of(handle, "request")}
        # Sealed: the record (and so the chain, Kafka, the archive) holds ciphertext only.
        for user in ("alice", "bob"):
            assert stored[user]["prompt"] == stored[user]["output"] == ""
            assert stored[user]["content"]["scheme"] == "vllm-audit-content/1"
            assert f"secret of {user}".encode() not in orjson.dumps(stored[user])
        # hmac/none keep no content: nothing to seal.
        assert stored["carol"]["content"]["scheme"] == "" and \
            stored["carol"]["prompt"].startswith("hmac-sha256:")
        admin, auditor = query(handle, "adm-secret"), query(handle, "aud-secret")
        got = await auditor.GetTrail(q.GetTrailRequest(request_id="r-alice"))
        assert got.summary.prompt == "secret of alice" and not got.summary.content.erased

        # Not an admin: refused. An unknown user: said so, nothing written.
        code, _ = await code_of(control(handle, "aud-secret").EraseSubject(
            q.EraseSubjectRequest(user="alice", tenant="acme", reason="ticket 1")))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        code, detail = await code_of(control(handle, "adm-secret").EraseSubject(
            q.EraseSubjectRequest(user="mallory", tenant="acme", reason="ticket 2")))
        assert code == grpc.StatusCode.NOT_FOUND and "no content key for user 'mallory'" in detail
        assert records_of(handle, "erasure") == []

        answer = await control(handle, "adm-secret").EraseSubject(
            q.EraseSubjectRequest(user="alice", tenant="acme", reason="GDPR Art. 17 #7"))
        assert answer.keys_destroyed == 1
        [erasure] = records_of(handle, "erasure")
        assert erasure["seq"] == answer.erasure_seq and erasure["cause"] == "request"
        assert erasure["content_key_ids"] == [stored["alice"]["content"]["key_id"]]
        assert erasure["subject_hmac"] == answer.subject_hmac and erasure["signature"]
        assert erasure["requested_by"].startswith("adm (admin")
        assert b"alice" not in orjson.dumps(erasure)  # named by HMAC only
        assert not list(handle.state.config.data_dir.glob(
            f"content-keys/*/{erasure['content_key_ids'][0]}.key"))
        verify(handle)  # the chain, the tree and the erasure's signature

        # The query API: alice's content erased, her metadata and bob's content there.
        got = await admin.GetTrail(q.GetTrailRequest(request_id="r-alice"))
        assert got.summary.content.erased and got.summary.content.erasure == "request"
        assert got.summary.prompt == "" and got.summary.user == "alice"
        assert b"secret of alice" not in got.summary.SerializeToString() + b"".join(
            e.SerializeToString() for e in got.events)
        got = await admin.GetTrail(q.GetTrailRequest(request_id="r-bob"))
        assert got.summary.prompt == "secret of bob"
        # A consumer's copy (what the publisher sent to Kafka) and an opened export.
        keys = handle.state.content_keys
        copies = {r["user"]: open_fields(r, keys) for _, r in requests_of(pub) if r.get("user")}
        assert copies["alice"]["content"]["erased"] and copies["alice"]["prompt"] == ""
        assert copies["bob"]["prompt"] == "secret of bob"
        assert any(r["type"] == "erasure" for _, r in requests_of(pub))
        opened = [orjson.loads(p) for p in open_payloads(
            read_records(handle.state.config.data_dir / "records"), keys)]
        [alice] = [r for r in opened if r.get("user") == "alice" and r["type"] == "request"]
        assert alice["content"]["erased"] and alice["status_code"] == 400

        # The HTTP route, same role and result.
        async with httpx.AsyncClient(base_url=f"http://{handle.http_address}/api/v1") as client:
            refused = await client.post("/erasures", json={"user": "bob", "tenant": "acme",
                                                           "reason": "r"},
                                        headers={"Authorization": "Bearer aud-secret"})
            assert refused.status_code == 403
            done = await client.post("/erasures", json={"user": "bob", "tenant": "acme",
                                                        "reason": "ticket 9"},
                                     headers={"Authorization": "Bearer adm-secret"})
            assert done.status_code == 200, done.text
            assert done.json()["keys_destroyed"] == 1
        verify(handle)


async def test_content_expires_before_its_records(tmp_path: Path) -> None:
    async with agent(tmp_path, content_key_period_seconds=1.0,
                     content_retention_days=1.5 / 86400) as (handle, _):
        async with Hook(handle.state.config.ingest_socket) as hook:
            await hook.send(1, http("r-dave", "dave", 10**15))
        await until(lambda: len(records_of(handle, "request")) == 1, "the record")
        # The sweep (every second) expires the key of a period ended 1.5 s ago.
        await until(lambda: records_of(handle, "erasure"), "an expiry record", timeout=15)
        [expiry] = records_of(handle, "erasure")
        assert expiry["cause"] == "expiry" and expiry["content_key_count"] == 1
        await until(lambda: handle.state.content_keys.live() == [], "the key destroyed")
        [record] = records_of(handle, "request")
        view = open_fields(record, handle.state.content_keys)
        assert view["content"]["erased"] and view["content"]["erasure"] == "expiry"
        assert view["user"] == "dave" and view["status_code"] == 400  # metadata stays
        got = await query(handle).GetTrail(q.GetTrailRequest(request_id="r-dave"))
        assert got.summary.content.erasure == "expiry"
        verify(handle)


async def test_sealing_off_erasure_says_so(tmp_path: Path) -> None:
    async with agent(tmp_path, content_plaintext=True) as (handle, pub):
        async with Hook(handle.state.config.ingest_socket) as hook:
            await hook.send(1, http("r-erin", "erin", 10**15))
        await until(lambda: len(requests_of(pub)) == 1, "the record")
        [(_, record)] = requests_of(pub)
        assert record["prompt"] == "secret of erin"  # as before sealing existed
        code, detail = await code_of(control(handle).EraseSubject(
            q.EraseSubjectRequest(user="erin", reason="x")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "sealing is off" in detail


async def test_a_watch_shows_content_as_get_and_list_do(tmp_path: Path) -> None:
    """Opened while the key lives, erased after: a watch's live events and its replay."""
    async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path, ROLES)) as (handle, _):
        auditor = query(handle, "aud-secret")
        live = auditor.WatchTrails(q.WatchTrailsRequest())
        assert handle.index is not None
        index = handle.index
        await until(lambda: bool(index.watches), "the watch registered")
        async with Hook(handle.state.config.ingest_socket) as hook:
            await hook.send(1, http("r-alice", "alice", 10**15))
            async with asyncio.timeout(30):
                event = await anext(aiter(live))
        live.cancel()
        assert event.trail.prompt == "secret of alice" and not event.trail.content.erased
        assert event.trail.content.ciphertext  # the sealed form stays beside what it opened
        answer = await control(handle, "adm-secret").EraseSubject(
            q.EraseSubjectRequest(user="alice", tenant="acme", reason="GDPR Art. 17 #8"))
        assert answer.keys_destroyed == 1
        replay = auditor.WatchTrails(q.WatchTrailsRequest(replay=True))
        async with asyncio.timeout(30):
            event = await anext(aiter(replay))
        replay.cancel()
        listed = (await auditor.ListTrails(q.ListTrailsRequest())).trails[0]
        for trail in (event.trail, listed):
            assert trail.content.erased and trail.content.erasure == "request"
            assert trail.prompt == "" and not trail.content.ciphertext and trail.user == "alice"
