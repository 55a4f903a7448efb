"""`vllm-audit verify` locates every kind of tampering; an intact log passes.

The chain comes from the real agent in-process (real gRPC ingest, real record log files);
`verify` and `export` run as the real CLI (`python -m vllm_audit_agent.cli`) on those files.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.agent_harness import Hook, agent, lifecycle, published_keys
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.records.chain import PUBLIC_KEY_NAME, Signer, canonical, record_hash, seal
from vllm_audit_agent.records.verify import file_payloads, verify_chain

REQUESTS = 12
CHECKPOINT_EVERY = 5


def finished(rid: str) -> pb.Event:
    return lifecycle(rid, pb.LIFECYCLE_PHASE_FINISHED, 10**15, finish_reason="stop")


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


async def _write_log(tmp: Path) -> None:
    async with agent(tmp, checkpoint_every=CHECKPOINT_EVERY) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        for seq in range(1, REQUESTS + 1):
            await hook.send(seq, finished(f"{seq}-ver1fy00"))
        await published_keys(published, REQUESTS)


@pytest.fixture(scope="module")
def written_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A record log written by the real agent: 12 requests, checkpoints every 5, stopped
    cleanly (so it ends with a checkpoint). Written once; each test gets a copy."""
    tmp = tmp_path_factory.mktemp("agent")
    asyncio.run(_write_log(tmp))
    return tmp / "data"


@pytest.fixture
def log_dir(written_log: Path, tmp_path: Path) -> Path:
    shutil.copytree(written_log, tmp_path / "data")
    return tmp_path / "data" / "records"


@pytest.fixture
def public_key(log_dir: Path) -> Path:
    return log_dir.parent / PUBLIC_KEY_NAME


def lines_of(log_dir: Path, tmp_path: Path) -> list[bytes]:
    out = tmp_path / "export.jsonl"
    done = cli("export", "--data-dir", log_dir.parent, "--output-file", out)
    assert done.returncode == 0, done.stderr
    return list(file_payloads(out))


def write(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "tampered.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def verify(path: Path, public_key: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    done = cli("verify", path, "--public-key", public_key, *extra)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, orjson.loads(done.stdout)


def seq_of(line: bytes) -> int:
    return int(orjson.loads(line)["seq"])


def index_of_type(lines: list[bytes], kind: str) -> list[int]:
    return [i for i, line in enumerate(lines) if orjson.loads(line)["type"] == kind]


def test_intact_log_directory_and_export_pass(log_dir: Path, public_key: Path,
                                                    tmp_path: Path) -> None:
    code, report = verify(log_dir, public_key)
    # 12 requests, a checkpoint after every 5, one at the stop: 12 + 3 records.
    assert code == 0 and report["intact"], report
    # The genesis and the level in effect first: 2 + 12 + 3 records, every one a leaf.
    assert (report["first_seq"], report["last_seq"], report["checkpoints"]) == (1, 17, 3)
    assert report["tree_size"] == 17 and len(report["log_id"]) == 32
    lines = lines_of(log_dir, tmp_path)
    assert len(lines) == 17 and [orjson.loads(line)["type"] for line in lines[:2]] == [
        "genesis", "level"]
    assert all(canonical(orjson.loads(line)) == line for line in lines)  # stored canonical
    code, report = verify(write(tmp_path, lines), public_key)
    assert code == 0 and report["records"] == 17


def _change_a_byte(lines: list[bytes]) -> tuple[list[bytes], int]:
    i = index_of_type(lines, "request")[5]
    changed = lines[i].replace(b"ver1fy00", b"ver1fy01")
    assert changed != lines[i]
    lines[i] = changed
    return lines, seq_of(lines[i])


def _delete(lines: list[bytes]) -> tuple[list[bytes], int]:
    seq = seq_of(lines[3])
    del lines[3]
    return lines, seq


def _swap(lines: list[bytes]) -> tuple[list[bytes], int]:
    lines[2], lines[3] = lines[3], lines[2]
    return lines, seq_of(lines[3])  # the record that should come first is now second


def _insert(lines: list[bytes]) -> tuple[list[bytes], int]:
    # A forged record that chains correctly onto seq 4 (the attacker can hash, not sign).
    forged = orjson.loads(lines[3])
    forged["request_id"] = "forged"
    value = seal(forged, seq_of(lines[3]) + 1, forged["hash"])
    lines.insert(4, value)
    return lines, seq_of(lines[5]) + 1  # the genuine seq 5 arrives where 6 was expected


def _rechain_after_change(lines: list[bytes]) -> tuple[list[bytes], int]:
    # Alter seq 2 and re-hash everything after it, checkpoint included (its signature
    # covers the head it names, which no longer matches).
    records = [orjson.loads(line) for line in lines]
    records[1]["request_id"] = "altered"
    out = lines[:1]
    prev = records[0]["hash"]
    for record in records[1:]:
        out.append(seal(record, record["seq"], prev))
        prev = record["hash"]
    first_checkpoint = index_of_type(lines, "checkpoint")[0]
    return out, seq_of(lines[first_checkpoint])


def _forge_checkpoint(lines: list[bytes]) -> tuple[list[bytes], int]:
    i = index_of_type(lines, "checkpoint")[0]
    checkpoint = orjson.loads(lines[i])
    Signer(Ed25519PrivateKey.generate()).sign(checkpoint)  # signed with another key
    lines[i] = seal(checkpoint, checkpoint["seq"], checkpoint["prev_hash"])
    return lines, checkpoint["seq"]


@pytest.mark.parametrize(("tamper", "reason"), [
    (_change_a_byte, "hash_mismatch"),
    (_delete, "seq_gap"),
    (_swap, "seq_gap"),
    (_insert, "seq_order"),
    (_rechain_after_change, "checkpoint_head_mismatch"),
    (_forge_checkpoint, "bad_checkpoint_signature"),
])
def test_tampering_is_detected_and_located(
    log_dir: Path, public_key: Path, tmp_path: Path,
    tamper: Callable[[list[bytes]], tuple[list[bytes], int]], reason: str,
) -> None:
    lines, seq = tamper(lines_of(log_dir, tmp_path))
    code, report = verify(write(tmp_path, lines), public_key)
    assert code == 1 and not report["intact"]
    assert (report["broken"]["reason"], report["broken"]["seq"]) == (reason, seq), report


def test_a_truncated_tail_is_reported_unverified(log_dir: Path, public_key: Path,
                                                       tmp_path: Path) -> None:
    lines = lines_of(log_dir, tmp_path)
    checkpoints = index_of_type(lines, "checkpoint")
    # Cut in the middle of the last checkpoint interval: the final checkpoint is gone.
    cut = lines[:checkpoints[-2] + 3]
    code, report = verify(write(tmp_path, cut), public_key)
    assert code == 1
    assert report["broken"]["reason"] == "unverified_after_checkpoint"
    assert report["broken"]["seq"] == seq_of(lines[checkpoints[-2]]) + 1
    assert report["unsigned_tail"] == 2
    # A live log may be checked with its unsigned tail allowed: reported, not a failure.
    code, report = verify(write(tmp_path, cut), public_key, "--allow-unsigned-tail")
    assert code == 0 and report["unsigned_tail"] == 2 and report["notes"]


def test_a_changed_byte_in_a_log_file_is_detected(log_dir: Path, public_key: Path
                                                        ) -> None:
    segment = next(p for p in sorted(log_dir.iterdir()) if p.name.endswith(".wal"))
    data = bytearray(segment.read_bytes())
    at = data.index(b"5-ver1fy00")
    data[at] = ord("6")
    segment.write_bytes(bytes(data))
    before = segment.read_bytes()
    code, report = verify(log_dir, public_key)
    assert code == 1
    # The WAL's checksum drops the damaged record (a gap at seq 7, after the genesis and the
    # level), or cuts the segment there (the chain ends at seq 6, not covered by a checkpoint).
    broken = report["broken"]
    assert (broken["reason"], broken["seq"]) == ("seq_gap", 7) or (
        broken["reason"] == "unverified_after_checkpoint" and report["last_seq"] == 6), report
    assert segment.read_bytes() == before  # verify never modifies the log


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert cli("verify", tmp_path).returncode == 2  # no --public-key
    key = tmp_path / "k.pub"
    key.write_bytes(b"not a key")
    done = cli("verify", tmp_path / "missing.jsonl", "--public-key", key)
    assert done.returncode == 2 and "not a PEM" in done.stderr
    assert cli("export", "--data-dir", tmp_path, "--since", "yesterday").returncode == 2


def test_verify_chain_checks_every_record_hash() -> None:
    # Unit-level: a record whose hash field was replaced by its correct value passes.
    signer = Signer(Ed25519PrivateKey.generate())
    record: dict[str, Any] = {"type": "request", "x": 1.0, "y": 0.25}
    line = seal(record, 1, "0" * 64)
    assert orjson.loads(line)["x"] == 1 and record_hash(orjson.loads(line)) == record["hash"]
    cp: dict[str, Any] = {"type": "checkpoint", "head_seq": 1, "head_hash": record["hash"],
                          "count": 1, "time_unix_ms": 0}
    signer.sign(cp)
    report = verify_chain([line, seal(cp, 2, record["hash"])], signer.public_key)
    assert report.intact and report.checkpoints == 1


async def test_an_exported_range_verifies_on_its_own(tmp_path: Path) -> None:
    from vllm_audit_agent.records.chain import PRIVATE_KEY_NAME, load_or_create_signer
    from vllm_audit_agent.records.log import RecordLog

    now = [1_790_000_000.0]
    data = tmp_path / "data"
    signer = load_or_create_signer(None, data)
    log = RecordLog(data / "records", 1 << 30, "batch", signer, checkpoint_every=4,
                    clock=lambda: now[0])
    for i in range(20):  # one record a minute
        log.append({"schema": 1, "request_id": f"r{i}", "latency_ms": 1.5,
                    "nested": {"a": [1, 2.0]}})
        now[0] += 60
    await log.write_pending()
    log.close()
    assert (data / PRIVATE_KEY_NAME).exists()
    since, until = 1_790_000_000 + 5 * 60, 1_790_000_000 + 10 * 60  # requests r5..r9
    out = tmp_path / "range.jsonl"
    done = cli("export", "--data-dir", data, "--since", str(since), "--until", str(until),
               "--output-file", out)
    assert done.returncode == 0, done.stderr
    records = [orjson.loads(line) for line in file_payloads(out)]
    requests = [r["request_id"] for r in records if r["type"] == "request"]
    # The range, then on to the checkpoint that covers it (after r11: 4 per checkpoint).
    assert requests == [f"r{i}" for i in range(5, 12)] and records[-1]["type"] == "checkpoint"
    code, report = verify(out, data / PUBLIC_KEY_NAME)
    assert code == 0 and report["first_seq"] == records[0]["seq"], report
    csv_out = tmp_path / "range.csv"
    iso_since = "2026-09-21T14:18:20Z"  # = since
    done = cli("export", "--data-dir", data, "--since", iso_since, "--until", str(until),
               "--format", "csv", "--output-file", csv_out)
    assert done.returncode == 0, done.stderr
    import csv

    rows = list(csv.DictReader(csv_out.open()))
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(5, 10)]
    assert rows[0]["nested"] == '{"a":[1,2]}' and rows[0]["latency_ms"] == "1.5"


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(
    st.text(max_size=12),
    st.recursive(st.none() | st.booleans() | st.integers(-(2**60), 2**60)
                 | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=12),
    max_size=12))
def test_a_sealed_record_is_its_canonical_bytes_and_hash(record: dict[str, Any]) -> None:
    """Whatever the record holds (a nested "hash" member, keys that sort around it), seal
    gives the canonical bytes of the record with its chain fields, and the hash a verifier
    computes from them."""
    record = {k: v for k, v in record.items() if k not in ("hash", "seq", "prev_hash")} | {
        "nested": {"hash": "not the chain's", "x": [{"hash": "1"}]}}
    value = seal(record, 7, "ab" * 32)
    parsed = orjson.loads(value)
    assert value == canonical(parsed)
    assert parsed["hash"] == record["hash"] == record_hash(parsed)
    assert (parsed["seq"], parsed["prev_hash"]) == (7, "ab" * 32)
