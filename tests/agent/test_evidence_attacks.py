"""The attacks an audit log exists for, on a log a real agent wrote beside a real witness: each
one either detected and located by `verify`, or — where the attack needs an anchor — shown to
pass without one and caught with it.

Who the checks stop (README, Tamper evidence): someone without the log key who deletes the
oldest records (unsealed_start) or changes a byte (hash_mismatch); someone who cuts the newest
records back to an earlier checkpoint, once a witness or a pinned checkpoint holds a later one
(truncated); an insider with the data directory *and* the key who rewrites and re-signs, once a
witness cosigned the original (rewritten). Not stopped: that insider before any witness saw the
records, and a log nobody anchored.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.kafka_broker import KafkaBroker
from harness.procs import Proc, start_witness
from tests.agent.test_metrics import get
from tests.support.agent_harness import (
    Hook,
    agent,
    agent_config,
    lifecycle,
    published_keys,
    requests_of,
    until,
)
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.delivery.kafka_sink import KafkaPublisher
from vllm_audit_agent.records import merkle, note
from vllm_audit_agent.records.chain import (
    PUBLIC_KEY_NAME,
    Signer,
    load_private_key,
    public_pem,
    raw_public_key,
    seal,
)
from vllm_audit_agent.records.read_only import read_records
from vllm_audit_agent.server import running_agent
from vllm_audit_agent.storage.wal import WriteAheadLog

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 30
WITNESS = "witness.test/evidence"


def finished(rid: str) -> pb.Event:
    return lifecycle(rid, pb.LIFECYCLE_PHASE_FINISHED, 10**15, finish_reason="stop")


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def verify(path: Path, keys: Path, *extra: str | Path) -> tuple[int, dict[str, Any]]:
    done = cli("verify", path, "--public-key", keys / "log.pub", *extra)
    assert done.returncode in (0, 1) and done.stdout, done.stderr
    return done.returncode, orjson.loads(done.stdout)


def witness_size(base: str, log_id: str) -> int:
    import urllib.error
    import urllib.parse
    import urllib.request
    origin = urllib.parse.quote(note.origin_of(log_id), safe="")
    try:
        with urllib.request.urlopen(f"{base}/checkpoint/{origin}", timeout=5) as answer:
            return note.parse(answer.read().decode()).checkpoint.size
    except urllib.error.HTTPError:
        return 0


async def _write_log(tmp: Path, base: str) -> None:
    async with agent(tmp, signing_key_file=tmp / "log.key", witnesses=(base,),
                     checkpoint_every=5, checkpoint_interval_seconds=0.2,
                     record_log_max_bytes=160_000) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        for seq in range(1, REQUESTS + 1):
            await hook.send(seq, finished(f"{seq}-ev1dence"))
        await published_keys(published, REQUESTS)
        records = handle.state.records
        # The genesis is seq 1 and leaf 0: the tree covering a record of seq s has s leaves.
        target = max(record["seq"] for _, record in requests_of(published))
        # The witness cosigned a checkpoint covering every request before the agent stops.
        await until(lambda: witness_size(base, records.log_id) >= target, "witness caught up", 30)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(directory holding data/, log.key, log.pub, the witness's key; the witness URL)."""
    tmp = tmp_path_factory.mktemp("evidence")
    key = Ed25519PrivateKey.generate()
    (tmp / "log.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp / "log.pub").write_bytes(public_pem(key.public_key()))
    proc: Proc
    proc, base = start_witness(tmp, tmp / "w.key", [tmp / "log.pub"], tmp / "w-state", WITNESS)
    try:
        asyncio.run(_write_log(tmp, base))
        yield tmp, base
    finally:
        proc.stop()


@pytest.fixture
def log_dir(written: tuple[Path, str], tmp_path: Path) -> Path:
    shutil.copytree(written[0] / "data" / "records", tmp_path / "records")
    return tmp_path / "records"


def payloads_of(records: Path) -> list[bytes]:
    return list(read_records(records))


def rewrite_log(records: Path, payloads: list[bytes]) -> None:
    """What an insider with the directory does: the segments replaced by these records."""
    for segment in records.glob("ingest-*.wal*"):  # plain and sealed segments
        segment.unlink()
    wal = WriteAheadLog(records, 1 << 30, "never")
    wal.append_many(payloads)
    wal.close()


def resign(payloads: list[bytes], key: Ed25519PrivateKey, change: int) -> list[bytes]:
    """The insider with the key: alters record `change`, then re-chains everything after it
    and re-signs every checkpoint (JSON signature, tree fields, signed note)."""
    signer, out = Signer(key), []
    tree = merkle.CompactRange()
    prev = "0" * 64
    for i, payload in enumerate(payloads):
        record = orjson.loads(payload)
        if i == change:
            record["user"] = "someone-else"
        if record["type"] == "checkpoint":
            root = tree.root()
            signed = note.sign_checkpoint(
                note.Checkpoint(note.origin_of(record["log_id"]), tree.size, root), key)
            record.update(tree_size=tree.size, root_hash=root.hex(),
                          compact_range=tree.to_hex(), note=signed.text(),
                          head_hash=prev)
            signer.sign(record)
        record.pop("hash", None)
        value = seal(record, record["seq"], prev)
        prev = record["hash"]
        if record.get("log_id"):
            tree.append(merkle.leaf_hash(value))
        out.append(value)
    return out


def test_the_log_verifies_with_its_witness(written: tuple[Path, str], log_dir: Path) -> None:
    tmp, base = written
    code, report = verify(log_dir, tmp, "--witness-url", base, "--witness-key",
                          tmp / "w-state" / "witness.pub", "--require-cosignatures", "1")
    assert code == 0, report
    assert report["anchors_checked"] == 1 and report["witnessed_size"] > REQUESTS
    assert report["tree_size"] == report["records"]  # every record from the genesis is a leaf


def test_deleting_the_oldest_records_is_named(written: tuple[Path, str], log_dir: Path) -> None:
    segments = sorted(log_dir.glob("ingest-*.wal*"))  # plain and sealed
    assert len(segments) > 3
    segments[0].unlink()  # no key needed: the file system is enough
    code, report = verify(log_dir, written[0])
    assert code == 1 and report["broken"]["reason"] == "unsealed_start", report
    assert report["broken"]["seq"] == report["first_seq"] > 1


def test_cutting_the_newest_records_is_caught_with_an_anchor(written: tuple[Path, str],
                                                             log_dir: Path) -> None:
    tmp, base = written
    payloads = payloads_of(log_dir)
    kinds = [orjson.loads(p)["type"] for p in payloads]
    checkpoints = [i for i, kind in enumerate(kinds) if kind == "checkpoint"]
    rewrite_log(log_dir, payloads[:checkpoints[1] + 1])  # back to the second checkpoint
    code, report = verify(log_dir, tmp)
    assert code == 0, report  # nothing in the log itself can tell: it is a shorter log
    code, report = verify(log_dir, tmp, "--witness-url", base)
    assert code == 1 and report["broken"]["reason"] == "truncated", report
    # A checkpoint pinned in a file works the same way.
    final = next(orjson.loads(p) for p in reversed(payloads)
                 if orjson.loads(p)["type"] == "checkpoint")
    pinned = tmp / f"pinned-{final['tree_size']}.note"
    pinned.write_text(final["note"])
    code, report = verify(log_dir, tmp, "--anchor", pinned)
    assert code == 1 and report["broken"]["reason"] == "truncated", report


def test_a_rewrite_with_the_key_is_caught_by_the_witness(written: tuple[Path, str],
                                                         log_dir: Path) -> None:
    tmp, base = written
    payloads = payloads_of(log_dir)
    third_request = [i for i, p in enumerate(payloads)
                     if orjson.loads(p)["type"] == "request"][2]
    rewrite_log(log_dir, resign(payloads, load_private_key(tmp / "log.key"), third_request))
    code, report = verify(log_dir, tmp)
    assert code == 0, report  # the key re-signs everything: intact, to the log alone
    code, report = verify(log_dir, tmp, "--witness-url", base)
    assert code == 1 and report["broken"]["reason"] == "rewritten", report


def test_a_proof_bundle_checks_without_this_project(written: tuple[Path, str], log_dir: Path,
                                                    tmp_path: Path) -> None:
    tmp, base = written
    bundle = tmp_path / "proof.json"
    done = cli("prove", log_dir, "--trail-id", "7-ev1dence", "--public-key", tmp / "log.pub",
               "--witness-url", base, "--output-file", bundle)
    assert done.returncode == 0, done.stderr
    log_key = raw_public_key(load_private_key(tmp / "log.key").public_key()).hex()
    witness_key = raw_public_key(
        serialization.load_pem_public_key((tmp / "w-state" / "witness.pub").read_bytes())  # type: ignore[arg-type]
    ).hex()

    def check(path: Path, *witness: str) -> subprocess.CompletedProcess[str]:
        # The checker runs with nothing of the project importable.
        return subprocess.run([sys.executable, "-I", str(ROOT / "scripts" / "check_proof.py"),
                               str(path), log_key, *witness], capture_output=True, text=True,
                              timeout=30)
    done = check(bundle, f"{WITNESS}={witness_key}")
    assert done.returncode == 0 and done.stdout.strip() == "proven", done.stdout + done.stderr
    proof = orjson.loads(bundle.read_bytes())
    assert orjson.loads(proof["record"])["trail_id"] == "7-ev1dence"
    forged = tmp_path / "forged.json"
    forged.write_bytes(orjson.dumps({**proof, "record": proof["record"].replace(
        "7-ev1dence", "8-ev1dence")}))
    done = check(forged)
    assert done.returncode == 1 and "root" in done.stdout
    done = check(bundle, f"{WITNESS}={log_key}")  # not the witness's key
    assert done.returncode == 1 and "did not cosign" in done.stdout


async def test_two_agents_on_one_broker_verify_log_by_log(tmp_path: Path) -> None:
    """Two pods as the chart deploys them (one topic prefix): their seqs collide, their logs
    do not. `verify` takes every pod's key and checks each log with its own."""
    broker = KafkaBroker()
    await asyncio.to_thread(broker.__enter__)
    try:
        keys = []
        for name in ("poda", "podb"):
            config = agent_config(tmp_path / name, kafka_bootstrap=broker.bootstrap)
            publisher = KafkaPublisher(broker.bootstrap, config.kafka_topic_prefix,
                                       max_backoff=0.5)
            async with running_agent(config, publisher=publisher) as handle, \
                    Hook(config.ingest_socket) as hook:
                for seq in range(1, 11):
                    await hook.send(seq, finished(f"{seq}-{name}0000"))
                await until(lambda h=handle, p=publisher: h.state.records.durable_seq >= 12
                            and p.backlog_records == 0, "published")
            keys.append(config.data_dir / PUBLIC_KEY_NAME)
        done = await asyncio.to_thread(
            cli, "verify", "--kafka-bootstrap", broker.bootstrap, "--public-key", keys[0],
            "--public-key", keys[1])
        out = orjson.loads(done.stdout)
        assert done.returncode == 0 and out["intact"], done.stderr
        assert len(out["logs"]) == 2 and {log["first_seq"] for log in out["logs"]} == {1}
        # genesis, level, 10 requests, the checkpoint at the stop: each log its own tree
        assert [log["tree_size"] for log in out["logs"]] == [13, 13]
        # The checkpoint topic as an anchor for one pod's directory: its newest checkpoint there
        # is the one the directory ends with.
        done = await asyncio.to_thread(
            cli, "verify", tmp_path / "poda" / "data" / "records", "--public-key", keys[0],
            "--anchor-kafka", broker.bootstrap)
        assert done.stdout, done.stderr
        report = orjson.loads(done.stdout)
        assert done.returncode == 0 and report["anchors_checked"] == 1, done.stderr
        done = await asyncio.to_thread(  # one pod's key alone: the other log does not verify
            cli, "verify", "--kafka-bootstrap", broker.bootstrap, "--public-key", keys[0])
        out = orjson.loads(done.stdout)
        assert done.returncode == 1 and sorted(log["intact"] for log in out["logs"]) == \
            [False, True]
    finally:
        await asyncio.to_thread(broker.__exit__, None, None, None)


async def test_a_log_cut_by_retention_verifies_by_its_seal_and_only_by_it(tmp_path: Path
                                                                           ) -> None:
    from tests.agent.test_recordlog import Clock, request
    from vllm_audit_agent.records.log import RecordLog

    key = Ed25519PrivateKey.generate()
    (tmp_path / "log.pub").write_bytes(public_pem(key.public_key()))
    clock = Clock(1_790_000_000.0)
    records = tmp_path / "records"
    log = RecordLog(records, 1 << 30, "batch", Signer(key), segment_bytes=700,
                    retention_days=180, checkpoint_every=3, clock=clock)
    for i in range(8):
        log.append(request(i))
    await log.write_pending()
    clock.now += 181 * 86400
    for i in range(8, 14):
        log.append(request(i))
    log.checkpoint()
    await log.write_pending()
    log.acknowledged(log.durable_seq, 0)
    log.reclaim()  # the seal first, then the old segments once it is durable
    await log.write_pending()
    log.checkpoint()
    await log.write_pending()
    log.close()
    assert log.counters["expired_segments_age"] >= 1
    code, report = verify(records, tmp_path)
    assert code == 0 and report["sealed_start"] and report["first_seq"] > 1, report
    seal_record = next(orjson.loads(p) for p in payloads_of(records)
                       if orjson.loads(p)["type"] == "seal")
    assert seal_record["removed_last_seq"] + 1 == report["first_seq"]
    # A record after the cut is still provable: the seal carries the tree before it.
    done = cli("prove", records, "--trail-id", "req-12", "--public-key", tmp_path / "log.pub")
    assert done.returncode == 0, done.stderr
    # Deleting one more segment by hand is not covered by any seal.
    sorted(records.glob("ingest-*.wal*"))[0].unlink()
    code, report = verify(records, tmp_path)
    assert code == 1 and report["broken"]["reason"] == "unsealed_start", report


@pytest.mark.parametrize("attack", ["rewritten", "truncated"])
async def test_the_agent_finds_a_break_at_start_and_goes_on_as_a_new_log(
        written: tuple[Path, str], tmp_path: Path, attack: str) -> None:
    tmp, base = written
    shutil.copytree(tmp / "data", tmp_path / "data")
    records_dir = tmp_path / "data" / "records"
    payloads = payloads_of(records_dir)
    if attack == "rewritten":
        first_request = next(i for i, p in enumerate(payloads)
                             if orjson.loads(p)["type"] == "request")
        rewrite_log(records_dir, resign(payloads, load_private_key(tmp / "log.key"),
                                        first_request))
    else:  # a data directory restored from an older copy
        checkpoints = [i for i, p in enumerate(payloads) if orjson.loads(p)["type"] == "checkpoint"]
        rewrite_log(records_dir, payloads[:checkpoints[1] + 1])
    old_log = orjson.loads(payloads[0])["log_id"]
    found = len(payloads_of(records_dir))
    async with agent(tmp_path, signing_key_file=tmp / "log.key", witnesses=(base,),
                     record_log_max_bytes=160_000) as (handle, _):
        records = handle.state.records
        assert records.counters[f"break_{attack}"] == 1
        assert records.counters[f"anchor_check_{attack}"] == 1
        assert records.log_id != old_log
        _, body = await get(handle)
        assert f'vllm_audit_log_breaks_total{{reason="{attack}"}} 1.0' in body.decode()
        await until(lambda: records.durable_seq > found, "the new genesis", 10)
    after = payloads_of(records_dir)
    genesis = [orjson.loads(p) for p in after if orjson.loads(p)["type"] == "genesis"]
    assert [g["log_id"] for g in genesis] == [old_log, records.log_id]
    assert genesis[1]["break"]["reason"] == attack and genesis[1]["break"]["log_id"] == old_log
    assert genesis[1]["follows"]["seq"] == orjson.loads(after[found - 1])["seq"]
    # The log as found is kept: verify names the same break against the witness (the new
    # log after it is a log of its own, with its own genesis).
    code, report = verify(records_dir, tmp, "--witness-url", base)
    assert code == 1 and report["broken"]["reason"] in (attack, "log_id_mismatch"), report
