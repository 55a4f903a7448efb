"""Witness cosignatures and logs seen without their genesis, as the fleet consumes, on a real
record log's records (real checkpoints, real C2SP cosignatures appended as the agent's
cosigner does) and a real chDB store: a cosigned checkpoint witnesses the log up to its size,
a quorum counts distinct configured keys, an uncosigned checkpoint's age is the metric and
its flag past the bound, a cosignature of another root is a fork named by log; a log whose
start was cut is verified from its first signed checkpoint."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.core import Metric

from vllm_audit_agent.fleet.consumer import ConsumerStats
from vllm_audit_agent.fleet.metrics import FleetCollector
from vllm_audit_agent.fleet.store import FleetStore
from vllm_audit_agent.fleet.verifier import FleetVerifier
from vllm_audit_agent.fleet.witnessing import WitnessPolicy
from vllm_audit_agent.records.chain import Signer
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.records.note import Checkpoint, SignedNote, cosign, parse
from vllm_audit_agent.records.read_only import read_records

W1, W2 = "witness.test/w1", "witness.test/w2"


class Pod:
    """A real record log written as an agent does, with witnesses cosigning its checkpoints."""

    def __init__(self, tmp: Path) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.log = RecordLog(tmp, 1 << 30, "never", Signer(self.key), checkpoint_every=1000)
        self.n = 0

    def requests(self, count: int) -> dict[str, object]:
        """`count` requests then a checkpoint; the checkpoint record."""
        for _ in range(count):
            self.n += 1
            self.log.append({"type": "request", "schema": 6, "trail_id": f"t{self.n}",
                             "revision": 0, "timestamp_ms": 1_790_000_000_000 + self.n,
                             "user": "alice"})
        self.log.checkpoint()
        asyncio.run(self.log.write_pending())
        return self.records()[-1]

    def cosigned(self, checkpoint: dict[str, object], *witnesses: tuple[str, Ed25519PrivateKey],
                 note: SignedNote | None = None) -> None:
        """What the cosigner appends once the witnesses answered (`note`: another one)."""
        signed = note or parse(str(checkpoint["note"]))
        for name, key in witnesses:
            signed = signed.with_signature(*cosign(signed.checkpoint, name, key, int(time.time())))
        self.log.append_cosignature(int(str(checkpoint["seq"])), int(str(checkpoint["tree_size"])),
                                    "http://witness", signed.text())
        asyncio.run(self.log.write_pending())

    def records(self) -> list[dict[str, object]]:
        return [orjson.loads(p) for p in read_records(self.log.directory)]

    def payloads(self) -> list[bytes]:
        return list(read_records(self.log.directory))


def consume(store: FleetStore, verifier: FleetVerifier, payloads: list[bytes]) -> None:
    fed = verifier.feed(payloads)
    store.insert(fed.store)
    store.save_logs(verifier.states(fed.changed))


def samples(verifier: FleetVerifier, name: str) -> dict[str, float]:
    """The collector's samples of `name` by log_id (or '' for an unlabelled one)."""
    metrics: list[Metric] = list(FleetCollector(verifier, ConsumerStats()).collect())
    return {s.labels.get("log_id", ""): s.value for m in metrics for s in m.samples
            if s.name == name}


def test_cosigned_checkpoints_witness_the_log_and_an_old_uncosigned_one_is_flagged(
        tmp_path: Path, store: FleetStore) -> None:
    pod = Pod(tmp_path / "log")
    w1, w2, stranger = (Ed25519PrivateKey.generate() for _ in range(3))
    first = pod.requests(4)
    pod.cosigned(first, (W1, w1), (W1 + "x", stranger))  # an unknown witness counts for nothing
    second = pod.requests(3)  # not cosigned (yet)
    policy = WitnessPolicy((w1.public_key(), w2.public_key()), 1, unwitnessed_seconds=600)
    verifier = FleetVerifier(store, [pod.key.public_key()], witnesses=policy)
    consume(store, verifier, pod.payloads())
    (log,) = verifier.logs.values()
    assert (log.status, log.witness.witnessed_size, log.witness.cosignatures) == \
        ("verified", first["tree_size"], 1)
    # The oldest checkpoint waiting is the second one: its age is the metric, past 600 s the flag.
    written = int(str(second["recorded_unix_ms"]))
    assert log.unwitnessed_seconds(written + 5_000) == pytest.approx(5.0)
    assert samples(verifier, "vllm_audit_fleet_log_unwitnessed")[log.log_id] == 0
    assert samples(verifier, "vllm_audit_fleet_log_witnessed_tree_size")[log.log_id] == \
        first["tree_size"]
    assert log.unwitnessed_seconds(written + 700_000) > 600
    # Kept with the log's state: a restarted verifier knows how far the log is witnessed.
    again = FleetVerifier(store, [pod.key.public_key()], witnesses=policy)
    again.load(store.logs())
    (loaded,) = again.logs.values()
    assert loaded.witness.witnessed_size == first["tree_size"]
    assert loaded.witness.unwitnessed_since_ms() == written
    # w2 cosigns the newest checkpoint: nothing waits any more.
    pod.cosigned(second, (W2, w2))
    consume(store, again, pod.payloads()[-1:])
    assert (loaded.witness.witnessed_size, loaded.unwitnessed_seconds(written + 700_000)) == \
        (second["tree_size"], 0.0)


def test_a_quorum_counts_distinct_configured_witnesses(tmp_path: Path, store: FleetStore) -> None:
    pod = Pod(tmp_path / "log")
    w1, w2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    first = pod.requests(3)
    pod.cosigned(first, (W1, w1))
    pod.cosigned(first, (W1, w1))  # the same witness twice is still one
    policy = WitnessPolicy((w1.public_key(), w2.public_key()), required=2)
    verifier = FleetVerifier(store, [pod.key.public_key()], witnesses=policy)
    consume(store, verifier, pod.payloads())
    (log,) = verifier.logs.values()
    assert (log.witness.witnessed_size, log.witness.cosignatures) == (0, 2)
    pod.cosigned(first, (W2, w2))
    consume(store, verifier, pod.payloads()[-1:])
    assert log.witness.witnessed_size == first["tree_size"]
    with pytest.raises(ValueError, match="need as many witness keys"):
        WitnessPolicy((w1.public_key(),), required=2)


def test_a_cosignature_of_another_root_is_a_fork_named_by_log(tmp_path: Path,
                                                               store: FleetStore) -> None:
    pod = Pod(tmp_path / "log")
    w1 = Ed25519PrivateKey.generate()
    first = pod.requests(3)
    # The witness was shown another root at the same size (a split view), and cosigned it.
    real = parse(str(first["note"])).checkpoint
    other = SignedNote(Checkpoint(real.origin, real.size, bytes(32)), ())
    pod.cosigned(first, (W1, w1), note=other)
    verifier = FleetVerifier(store, [pod.key.public_key()],
                             witnesses=WitnessPolicy((w1.public_key(),)))
    consume(store, verifier, pod.payloads())
    (log,) = verifier.logs.values()
    assert (log.status, log.reason, log.break_seq) == \
        ("broken", "cosignature_mismatch", pod.records()[-1]["seq"])
    assert "another history" in log.detail
    assert samples(verifier, "vllm_audit_fleet_log_broken")[log.log_id] == 1


def test_without_witness_keys_cosignatures_are_not_checked(tmp_path: Path,
                                                           store: FleetStore) -> None:
    pod = Pod(tmp_path / "log")
    first = pod.requests(3)
    pod.cosigned(first, (W1, Ed25519PrivateKey.generate()))
    verifier = FleetVerifier(store, [pod.key.public_key()])
    consume(store, verifier, pod.payloads())
    (log,) = verifier.logs.values()
    assert (log.status, log.witness.cosignatures) == ("verified", 0)
    assert samples(verifier, "vllm_audit_fleet_log_unwitnessed_seconds") == {}


def test_a_log_seen_without_its_genesis_is_verified_from_its_first_signed_checkpoint(
        tmp_path: Path, store: FleetStore) -> None:
    pod = Pod(tmp_path / "log")
    pod.requests(4)
    pod.requests(4)
    pod.requests(4)
    payloads = pod.payloads()
    records = [orjson.loads(p) for p in payloads]
    # The topic's retention cut the first 7 records (the genesis among them) before the fleet came.
    cut = payloads[7:]
    now = [0.0]
    verifier = FleetVerifier(store, [pod.key.public_key()], gap_seconds=5, clock=lambda: now[0])
    consume(store, verifier, cut)
    (log,) = verifier.logs.values()
    assert log.status == "waiting"  # the genesis may still come on the other topic
    now[0] = 10
    assert verifier.gaps() == {log.log_id}
    store.save_logs(verifier.states([log.log_id]))
    first = records[7]["seq"]
    assert (log.status, log.first_seq, log.head_seq) == ("verified", first, records[-1]["seq"])
    assert log.tree is not None and log.tree.tree is not None
    assert log.tree.tree.size == len(payloads)  # the tree goes on from the checkpoint's range
    # A record from before the start that turns up later is stored, not taken for a rewrite.
    consume(store, verifier, payloads[3:4])
    assert log.status == "verified" and store.record_at(log.log_id, records[3]["seq"]) == payloads[3]
    # A rewritten record after the start is still named.
    changed = dict(records[9], user="mallory")
    consume(store, verifier, [orjson.dumps(changed)])
    assert (log.status, log.reason, log.break_seq) == \
        ("broken", "conflicting_duplicate", records[9]["seq"])


def test_a_cut_log_signed_by_an_unknown_key_or_without_a_checkpoint_stays_unverified(
        tmp_path: Path, store: FleetStore) -> None:
    signed_elsewhere, no_checkpoint = Pod(tmp_path / "a"), Pod(tmp_path / "b")
    signed_elsewhere.requests(4)
    signed_elsewhere.requests(4)
    for i in range(4):
        no_checkpoint.log.append({"type": "request", "schema": 6, "trail_id": f"u{i}",
                                  "revision": 0, "timestamp_ms": 1, "user": "bob"})
    asyncio.run(no_checkpoint.log.write_pending())
    now = [0.0]
    trusted = Ed25519PrivateKey.generate().public_key()
    verifier = FleetVerifier(store, [trusted, no_checkpoint.key.public_key()], gap_seconds=5,
                             clock=lambda: now[0])
    consume(store, verifier, signed_elsewhere.payloads()[3:] + no_checkpoint.payloads()[2:])
    now[0] = 10
    verifier.gaps()
    by_status = {log.log_id: (log.status, log.reason) for log in verifier.logs.values()}
    ids = [orjson.loads(p.payloads()[-1])["log_id"] for p in (signed_elsewhere, no_checkpoint)]
    assert [by_status[i] for i in ids] == [("untrusted", "untrusted_key"),
                                           ("no_genesis", "no_genesis")]
