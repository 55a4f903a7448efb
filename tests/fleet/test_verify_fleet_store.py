"""`vllm-audit verify --fleet-store`: each log the fleet's store holds, checked by the real CLI
(a process of its own: chDB allows one per data directory) against the pods' keys and a
witness's key — every log, one log, a time range — and a log stored with a record missing is
named broken by its id."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.procs import REPO, base_env
from vllm_audit_agent.fleet.store import FleetStore
from vllm_audit_agent.records.chain import Signer
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.records.note import cosign, parse
from vllm_audit_agent.records.read_only import read_records


def pem(key: Ed25519PrivateKey, path: Path) -> Path:
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def a_log(tmp: Path, key: Ed25519PrivateKey, witness: Ed25519PrivateKey, waves: int
          ) -> list[bytes]:
    """Requests and a checkpoint per wave, each checkpoint cosigned by the witness."""
    log = RecordLog(tmp, 1 << 30, "never", Signer(key), checkpoint_every=1000)
    for wave in range(waves):
        for i in range(4):
            log.append({"type": "request", "schema": 6, "trail_id": f"t{wave}-{i}",
                        "revision": 0, "timestamp_ms": 1_790_000_000_000, "user": "alice"})
        log.checkpoint()
        asyncio.run(log.write_pending())
        checkpoint = orjson.loads(list(read_records(tmp))[-1])
        note = parse(checkpoint["note"])
        note = note.with_signature(*cosign(note.checkpoint, "w1", witness, int(time.time())))
        log.append_cosignature(checkpoint["seq"], checkpoint["tree_size"], "w1", note.text())
        asyncio.run(log.write_pending())
        time.sleep(0.05)  # the waves' records are written at distinct milliseconds
    return list(read_records(tmp))


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", "verify", *args],
                          cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=120,
                          check=False)


def test_each_log_in_the_fleet_store_verifies_and_a_missing_record_is_named(
        tmp_path: Path) -> None:
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    witness = Ed25519PrivateKey.generate()
    good = a_log(tmp_path / "a", keys[0], witness, 3)
    holed = a_log(tmp_path / "b", keys[1], witness, 2)
    missing = orjson.loads(holed[5])["seq"]
    store = FleetStore.open(str(tmp_path / "store"))
    try:
        store.insert(good + good[:4])  # a re-delivery folds
        store.insert(holed[:5] + holed[6:])
    finally:
        store.close()
    good_id, holed_id = (orjson.loads(log[0])["log_id"] for log in (good, holed))
    common = ["--fleet-store", str(tmp_path / "store"),
              "--public-key", str(pem(keys[0], tmp_path / "a.pub")),
              "--public-key", str(pem(keys[1], tmp_path / "b.pub")),
              "--witness-key", str(pem(witness, tmp_path / "w.pub")),
              "--require-cosignatures", "1"]
    every = verify(*common)
    assert every.returncode == 1, every.stderr
    reports = {r["log_id"]: r for r in orjson.loads(every.stdout)["logs"]}
    assert reports[good_id]["intact"] and reports[good_id]["records"] == len(good)
    last_checkpoint = [orjson.loads(r) for r in good if b'"type":"checkpoint"' in r][-1]
    assert reports[good_id]["witnessed_size"] == last_checkpoint["tree_size"]
    assert reports[holed_id]["broken"]["reason"] == "seq_gap"
    assert reports[holed_id]["broken"]["seq"] == missing
    assert f"BROKEN (log {holed_id}) at seq {missing}: seq_gap" in every.stderr
    # One log: intact, exit 0.
    one = verify(*common, "--log-id", good_id)
    assert one.returncode == 0, one.stderr
    assert [r["log_id"] for r in orjson.loads(one.stdout)["logs"]] == [good_id]
    # A time range: the second wave's records, read on to the checkpoint after them.
    second = [r for r in map(orjson.loads, good) if str(r.get("trail_id")).startswith("t1-")]
    since, until = second[0]["recorded_unix_ms"], second[-1]["recorded_unix_ms"] + 1
    ranged = verify(*common, "--log-id", good_id, "--since", str(since), "--until", str(until),
                    "--allow-unsigned-tail")
    assert ranged.returncode == 0, ranged.stderr
    (report,) = orjson.loads(ranged.stdout)["logs"]
    assert report["first_seq"] == second[0]["seq"]
    assert report["last_checkpoint_seq"] == report["last_seq"] >= second[-1]["seq"]
