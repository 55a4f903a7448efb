"""Verification as the fleet consumes, on a real record log's records and a real chDB store:
one log over three topics arrives interleaved and re-delivered, and still verifies; a restart
goes on from the store; a rewritten copy, a gap and an untrusted key are named by log."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vllm_audit_agent.fleet.store import FleetStore
from vllm_audit_agent.fleet.verifier import FleetVerifier
from vllm_audit_agent.records.chain import Signer, seal
from vllm_audit_agent.records.entry import TOPICS
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.records.read_only import read_records


def written_log(tmp: Path, key: Ed25519PrivateKey, n: int) -> list[bytes]:
    """A real record log's records: genesis, requests, checkpoints every 5."""
    log = RecordLog(tmp, 1 << 30, "never", Signer(key), checkpoint_every=5)
    for i in range(n):
        log.append({"type": "request", "schema": 6, "trail_id": f"t{i}", "revision": 0,
                    "timestamp_ms": 1_790_000_000_000 + i, "user": "alice"})
    log.checkpoint()
    asyncio.run(log.write_pending())
    return list(read_records(tmp))


def by_topic(payloads: list[bytes]) -> list[bytes]:
    """As a consumer of the three topics sees one log: each topic in order, interleaved."""
    topics: dict[str, list[bytes]] = {}
    for p in payloads:
        topics.setdefault(TOPICS[orjson.loads(p)["type"]], []).append(p)
    rng, out = random.Random(7), []
    queues = [q for q in topics.values() if q]
    while queues:
        q = rng.choice(queues)
        out.append(q.pop(0))
        queues = [q for q in queues if q]
    return out


def consume(store: FleetStore, verifier: FleetVerifier, payloads: list[bytes], batch: int
            ) -> None:
    for i in range(0, len(payloads), batch):
        fed = verifier.feed(payloads[i:i + batch])
        store.insert(fed.store)
        store.save_logs(verifier.states(fed.changed))


def test_interleaved_redelivered_and_restarted_a_log_verifies(tmp_path: Path,
                                                                store: FleetStore) -> None:
    key = Ed25519PrivateKey.generate()
    payloads = written_log(tmp_path / "log", key, 40)
    stream = by_topic(payloads)
    first = FleetVerifier(store, [key.public_key()])
    consume(store, first, [p for p in stream[:30] if b'"genesis"' not in p], 7)
    assert store.logs()[0]["status"] == "waiting"  # requests stored, the genesis not yet in
    # a restart: the next verifier knows only the store; Kafka re-delivers from an older offset
    second = FleetVerifier(store, [key.public_key()])
    second.load(store.logs())
    consume(store, second, [p for p in stream if b'"genesis"' in p] + stream[20:], 6)
    (state,) = store.logs()
    assert state["status"] == "verified", state
    assert state["head_seq"] == len(payloads) == store.count()
    assert state["tree_size"] == len(payloads)  # every record is a leaf
    assert state["checkpoints"] == sum(b'"type":"checkpoint"' in p for p in payloads)


def test_a_rewritten_copy_a_gap_and_an_untrusted_key_are_named(tmp_path: Path,
                                                                 store: FleetStore) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    good = written_log(tmp_path / "a", key, 12)
    gappy = written_log(tmp_path / "b", key, 12)
    stranger = written_log(tmp_path / "c", other, 3)
    now = [0.0]
    verifier = FleetVerifier(store, [key.public_key()], gap_seconds=5, clock=lambda: now[0])
    consume(store, verifier, good + gappy[:6] + gappy[7:] + stranger, 50)
    # a rewritten copy of the good log: one record changed, the chain re-sealed after it
    rewritten = [orjson.loads(p) for p in good]
    rewritten[4]["user"] = "mallory"
    prev = rewritten[3]["hash"]
    copy = []
    for record in rewritten:
        del record["hash"]
        copy.append(seal(record, record["seq"], prev))
        prev = record["hash"]
    consume(store, verifier, copy[4:], 50)
    now[0] = 10
    assert verifier.gaps() == {orjson.loads(gappy[0])["log_id"]}
    states = {s["log_id"]: s for s in verifier.states(verifier.logs)}
    by_log = {orjson.loads(p[0])["log_id"]: (s["status"], s["reason"], s["break_seq"])
              for p, s in ((good, None), (gappy, None), (stranger, None))
              for s in [states[orjson.loads(p[0])["log_id"]]]}
    assert list(by_log.values()) == [("broken", "conflicting_duplicate", 5),
                                     ("broken", "seq_gap", 7), ("untrusted", "untrusted_key", 0)]
    # the store kept the original, not the copy
    assert store.record_at(orjson.loads(good[0])["log_id"], 5) == good[4]


def test_a_restart_verifies_what_the_store_holds_past_the_saved_head(tmp_path: Path,
                                                                    store: FleetStore) -> None:
    """Records stored and committed after the head that was saved (a store written ahead of
    its log states) are verified when the state is loaded: no re-delivery comes to do it."""
    key = Ed25519PrivateKey.generate()
    payloads = written_log(tmp_path / "log", key, 12)
    first = FleetVerifier(store, [key.public_key()])
    consume(store, first, payloads[:4], 4)
    store.insert(payloads[4:])
    second = FleetVerifier(store, [key.public_key()])
    second.load(store.logs())
    (log,) = second.logs.values()
    assert (log.status, log.head_seq, log.pending) == ("verified", len(payloads), {})
