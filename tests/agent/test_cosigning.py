"""The agent's witness client (delivery/cosigning.py) against real `vllm-audit witness`
processes: over a log held in memory (the record log's witness interface on a real Merkle
tree), then inside a real agent whose record log offers its checkpoints."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from harness.procs import Proc, free_port, start_witness
from tests.agent.test_metrics import get
from tests.support.agent_harness import agent, query, until
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.delivery.cosigning import WITNESS_ERRORS, Cosigner
from vllm_audit_agent.records import merkle, note
from vllm_audit_agent.records.chain import load_public_key, public_pem
from vllm_audit_agent.records.witness_protocol import REFUSAL_REASONS

NAME = "witness.test/w1"
LOG_ID = "fedcba9876543210"


class MemoryLog:
    """The record log's witness interface over leaves in memory (a real Merkle tree)."""

    def __init__(self, key: Ed25519PrivateKey, prefix: bytes = b"record") -> None:
        self.key, self.prefix = key, prefix
        self.log_id = LOG_ID
        self.leaves: list[bytes] = []
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.cosignatures: list[tuple[int, int, str, str]] = []
        self.witnessed_sizes: list[int] = []
        self.seq = 0

    def add_checkpoint_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        self.listeners.append(listener)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return merkle.consistency_proof(old_size, new_size, merkle.subtree_of_leaves(
            self.leaves[:new_size]))

    def append_cosignature(self, checkpoint_seq: int, tree_size: int, witness: str,
                           note_text: str) -> int:
        self.cosignatures.append((checkpoint_seq, tree_size, witness, note_text))
        self.seq += 1
        return self.seq

    def witnessed(self, size: int) -> None:
        self.witnessed_sizes.append(size)

    def grow(self, n: int) -> None:
        start = len(self.leaves)
        self.leaves += [merkle.leaf_hash(b"%s %d" % (self.prefix, i)) for i in range(start, start + n)]
        self.seq += n
        self.seq += 1
        signed = note.sign_checkpoint(note.Checkpoint(note.origin_of(self.log_id), len(self.leaves),
                                                      merkle.root_of(self.leaves)), self.key)
        record = {"seq": self.seq, "log_id": self.log_id, "tree_size": len(self.leaves),
                  "root_hash": merkle.root_of(self.leaves).hex(), "note": signed.text()}
        for listener in self.listeners:
            listener(record)


@pytest.fixture
def log_key(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "log.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "log.pub").write_bytes(public_pem(key.public_key()))
    return key, tmp_path / "log.pub"


@pytest.fixture
def witness(tmp_path: Path, log_key: tuple[Ed25519PrivateKey, Path]) -> Iterator[tuple[Proc, str]]:
    proc, base = start_witness(tmp_path, tmp_path / "w.key", [log_key[1]], tmp_path / "w-state",
                               NAME)
    try:
        yield proc, base
    finally:
        proc.stop()


def witness_key(tmp_path: Path) -> Any:
    return load_public_key(tmp_path / "w-state" / "witness.pub")


async def test_cosigns_each_checkpoint_and_appends_its_cosignature(
        tmp_path: Path, log_key: tuple[Ed25519PrivateKey, Path], witness: tuple[Proc, str]) -> None:
    log = MemoryLog(log_key[0])
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cosigner = Cosigner(log, [witness[1], dead], timeout=2.0)
    cosigner.start()
    live, down = cosigner.witnesses
    try:
        for n, total in ((3, 3), (4, 7), (9, 16)):
            started = time.monotonic()
            log.grow(n)
            assert time.monotonic() - started < 0.05  # the listener never waits on a witness
            await until(lambda total=total: live.confirmed == total, f"cosigned at {total}", 10)
        assert [c[1] for c in log.cosignatures] == [3, 7, 16]
        seq, _, url, text = log.cosignatures[-1]
        assert (seq, url) == (log.seq - 1, witness[1])  # the checkpoint's seq, not the record's
        cosigned = note.parse(text)
        assert cosigned.checkpoint.size == 16
        assert note.log_signature_valid(cosigned, log_key[0].public_key())
        assert note.cosignature_time(cosigned, NAME, witness_key(tmp_path)) is not None
        assert live.cosigned == 3 and sum(live.refused.values()) == 0
        # The dead witness: counted unreachable, behind, and the proof base never moved past it.
        assert down.errors["unreachable"] >= 1 and down.cosigned == 0
        assert cosigner.uncosigned_seconds(down) > 0 and cosigner.uncosigned_seconds(live) == 0
        assert log.witnessed_sizes == []
    finally:
        await cosigner.stop(2.0)


async def test_an_agent_that_restarts_learns_the_witness_size_from_its_409(
        tmp_path: Path, log_key: tuple[Ed25519PrivateKey, Path], witness: tuple[Proc, str]) -> None:
    log = MemoryLog(log_key[0])
    first = Cosigner(log, [witness[1]], timeout=2.0)
    first.start()
    log.grow(5)
    await until(lambda: first.witnesses[0].confirmed == 5, "first cosignature", 10)
    await first.stop(2.0)
    again = Cosigner(log, [witness[1]], timeout=2.0)  # knows nothing: offers from size 0
    again.start()
    try:
        log.grow(6)
        w = again.witnesses[0]
        await until(lambda: w.confirmed == 11, "cosigned after the 409", 10)
        assert w.refused["old_size_mismatch"] == 1
        assert log.witnessed_sizes == [5, 11]
        assert sum(w.errors.values()) == 0
    finally:
        await again.stop(2.0)


@pytest.mark.parametrize("attack", ["fork", "rollback"])
async def test_a_fork_or_a_rollback_is_refused_and_counted(
        tmp_path: Path, log_key: tuple[Ed25519PrivateKey, Path], witness: tuple[Proc, str],
        attack: str) -> None:
    honest = MemoryLog(log_key[0])
    cosigner = Cosigner(honest, [witness[1]], timeout=2.0)
    cosigner.start()
    honest.grow(8)
    await until(lambda: cosigner.witnesses[0].confirmed == 8, "honest cosignature", 10)
    await cosigner.stop(2.0)
    # The same key (beside the log) signs another history: rewritten at the same size, or cut
    # back to 5 records.
    other = MemoryLog(log_key[0], b"forged" if attack == "fork" else b"record")
    forger = Cosigner(other, [witness[1]], timeout=2.0)
    forger.start()
    try:
        other.grow(8 if attack == "fork" else 5)
        w = forger.witnesses[0]
        await until(lambda: w.refused[attack] >= 1, f"{attack} refused", 10)
        assert w.cosigned == 0 and other.cosignatures == []
        assert cosigner_refusals(forger) == {attack}
    finally:
        await forger.stop(2.0)


def cosigner_refusals(cosigner: Cosigner) -> set[str]:
    return {r for w in cosigner.witnesses for r, n in w.refused.items()
            if n and r != "old_size_mismatch"}


def read_url(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def metric_values(body: bytes, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples
            if s.name == name}


async def test_an_agent_offers_its_checkpoints_to_a_witness_and_records_cosignatures(
        tmp_path: Path, log_key: tuple[Ed25519PrivateKey, Path]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with agent(tmp_path, signing_key_file=tmp_path / "log.key", witnesses=(url,),
                     witness_timeout_seconds=2.0, checkpoint_interval_seconds=0.2) as (handle, _):
        records = handle.state.records
        _, body = await get(handle)
        # Born at 0 for every reason and error before anything happened.
        refusals = metric_values(body, "vllm_audit_witness_refusals_total")
        assert refusals == {(("reason", r), ("witness", url)): 0 for r in REFUSAL_REASONS}
        errors = metric_values(body, "vllm_audit_witness_errors_total")
        assert set(errors) == {(("error", e), ("witness", url)) for e in WITNESS_ERRORS}
        # The witness is down: records and checkpoints go on, the misses are counted.
        before = records.durable_seq
        await query(handle).GetStats(q.StatsRequest())  # an access record
        await until(lambda: records.durable_seq > before + 1, "a record and a checkpoint", 10)
        _, body = await get(handle)
        assert metric_values(body, "vllm_audit_witness_errors_total")[
            (("error", "unreachable"), ("witness", url))] >= 1
        assert metric_values(body, "vllm_audit_witness_uncosigned_seconds")[
            (("witness", url),)] > 0
        # The witness comes up: the newest checkpoint is cosigned (after the retry backoff).
        proc, _ = await asyncio.to_thread(start_witness, tmp_path, tmp_path / "w.key",
                                          [log_key[1]], tmp_path / "w-state", NAME, port)
        try:
            await query(handle).GetStats(q.StatsRequest())
            await until(lambda: records.counters["appended_cosignature"] >= 1,
                        "a cosignature record", 20)
            _, body = await get(handle)
            assert metric_values(body, "vllm_audit_witness_cosigned_checkpoints_total")[
                (("witness", url),)] >= 1
            origin = note.origin_of(records.log_id)
            anchored = note.parse(await asyncio.to_thread(read_url, f"{url}/checkpoint/{origin}"))
            assert note.cosignature_time(anchored, NAME, witness_key(tmp_path)) is not None
            assert note.log_signature_valid(anchored, log_key[0].public_key())
            assert records.tree is not None and 0 < anchored.checkpoint.size <= records.tree.size
        finally:
            await asyncio.to_thread(proc.stop)
