"""Verification as the fleet consumes: each log's records checked in seq order, from its
genesis, with the same checks as `vllm-audit verify` (records/verify.py's `verify_chain` over
each contiguous run, joined to the run before by its head record; records/tree_check.py's
TreeCheck carried from run to run for the log's identity, Merkle tree and signed checkpoints).

Kafka delivers one log over three topics (requests, checkpoints, access), each in order, so a
log's records arrive interleaved: those after a missing seq wait (`pending`) until it comes.
A seq still missing `gap_seconds` after a later one arrived is a gap; a record that differs
from the one verified at its seq is a conflicting duplicate (a rewritten copy). Both, and every
break verify names, mark the log broken by its id (sticky: its records are stored, not
verified further). A log whose genesis key is not among the trusted keys is `untrusted`.

A log whose first record seen is not its genesis (the topic's retention cut its start before
the fleet came) waits `gap_seconds` for the genesis, then is verified from its first
checkpoint or seal carrying a compact range that a trusted key signed, and the records chained
to it before (`first_seq`: where its verification starts; records below it are stored, not
verified). Without such a record among those waiting it is `no_genesis`; with one no trusted
key signed, `untrusted`.

Witness cosignatures (witnessing.py) are checked with the configured witness keys: a log is
witnessed up to a tree size, and how long its oldest checkpoint beyond that has waited is a
metric (and an alert past `WitnessPolicy.unwitnessed_seconds`); a cosignature of a root the
log never signed at that size breaks it (`cosignature_mismatch`).

Each log's state (head, tree, status) is saved in the store with the batch, so a restarted
consumer resumes where the store is (records after the head are read back from the store).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vllm_audit_agent.fleet.witnessing import Witnessing, WitnessPolicy
from vllm_audit_agent.records.chain import (
    RECORD_TYPE_CHECKPOINT,
    RECORD_TYPE_COSIGNATURE,
    RECORD_TYPE_GENESIS,
    RECORD_TYPE_SEAL,
    raw_public_key,
    verify_signature,
)
from vllm_audit_agent.records.fields import ChainFields, parsed_fields
from vllm_audit_agent.records.merkle import CompactRange
from vllm_audit_agent.records.tree_check import TreeCheck, TreeFinding
from vllm_audit_agent.records.verify import verify_chain

#: A log's status; `verified`: every record up to its head checks.
STATUSES = ("waiting", "verified", "broken", "untrusted", "no_genesis")
NO_WITNESSES = WitnessPolicy()
PENDING_MAX = 200_000  # records waiting for a missing seq, per log, before it is a gap


def _ignore(record: Any, payload: bytes) -> None:
    """feed's `keep` when the caller builds no columns."""


class RecordSource(Protocol):
    """What the verifier reads back from the store."""

    def records_of(self, log_id: str, after_seq: int, limit: int = ...) -> list[bytes]: ...

    def records_at(self, log_id: str, seqs: Sequence[int]) -> dict[int, bytes]: ...


class _Resumed(TreeCheck):
    """The log's TreeCheck, fed again its head record (which joins a run to the one before):
    records up to `through` were added already."""
    through = 0

    def add(self, record: dict[str, Any], payload: bytes) -> TreeFinding | None:
        if int(record["seq"]) <= self.through:
            return None
        return super().add(record, payload)


@dataclass
class Fed:
    """What a batch did: the logs whose state changed, the records the store should keep."""
    changed: set[str] = field(default_factory=set)
    store: list[bytes] = field(default_factory=list)


@dataclass
class LogState:
    log_id: str
    status: str = "waiting"
    head_seq: int = 0
    head: bytes = b""  # the head record (not saved: read back from the store)
    key: str = ""  # the genesis's public key, hex
    identity: dict[str, Any] = field(default_factory=dict)
    verified: int = 0
    checkpoints: int = 0
    reason: str = ""
    break_seq: int = 0
    detail: str = ""
    last_record_ms: int = 0
    first_seq: int = 0  # where verification started (after the genesis: a partial start)
    witness: Witnessing = field(default_factory=Witnessing)
    tree: _Resumed | None = None
    pending: dict[int, bytes] = field(default_factory=dict)
    #: seq -> (the pending record, its chain fields from feed's parse); a claim verify_chain
    #: checks as it checks one read from the bytes, used only for that very payload object.
    claims: dict[int, tuple[bytes, ChainFields]] = field(default_factory=dict)
    waiting_since: float | None = None

    def drop_pending(self) -> None:
        self.pending.clear()
        self.claims.clear()

    def unwitnessed_seconds(self, now_ms: int) -> float:
        """How long its oldest checkpoint has waited for a witness quorum (0: none waits)."""
        since = self.witness.unwitnessed_since_ms()
        return max(0.0, (now_ms - since) / 1000) if since else 0.0

    def saved(self) -> dict[str, Any]:
        tree = self.tree.tree if self.tree is not None else None
        return {"log_id": self.log_id, "status": self.status, "head_seq": self.head_seq,
                "key": self.key, "identity": self.identity, "verified": self.verified,
                "checkpoints": self.checkpoints, "reason": self.reason,
                "break_seq": self.break_seq, "detail": self.detail,
                "last_record_ms": self.last_record_ms, "first_seq": self.first_seq,
                "witness": self.witness.saved(),
                "tree_size": tree.size if tree is not None else None,
                "tree_nodes": tree.to_hex() if tree is not None else []}


class FleetVerifier:
    def __init__(self, source: RecordSource, trusted_keys: Iterable[Ed25519PublicKey],
                 gap_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 witnesses: WitnessPolicy = NO_WITNESSES) -> None:
        self.source = source
        self.trusted = {raw_public_key(k).hex(): k for k in trusted_keys}
        self.witnesses = witnesses
        self.gap_seconds = gap_seconds
        self.clock = clock
        self.logs: dict[str, LogState] = {}

    # -- restart ---------------------------------------------------------------------------
    def load(self, saved: Iterable[dict[str, Any]]) -> None:
        """The states the store kept; each verifying log reads its head and what came after it
        back from the store."""
        for s in saved:
            log = LogState(str(s["log_id"]), str(s["status"]), int(s["head_seq"]),
                           key=str(s.get("key", "")), identity=dict(s.get("identity") or {}),
                           verified=int(s.get("verified", 0)),
                           checkpoints=int(s.get("checkpoints", 0)), reason=str(s.get("reason", "")),
                           break_seq=int(s.get("break_seq", 0)), detail=str(s.get("detail", "")),
                           last_record_ms=int(s.get("last_record_ms", 0)),
                           first_seq=int(s.get("first_seq", 0)),
                           witness=Witnessing.from_saved(s.get("witness")))
            self.logs[log.log_id] = log
            if log.status not in ("verified", "waiting"):
                continue
            if log.status == "verified":
                log.head = self.source.records_at(log.log_id, [log.head_seq]).get(
                    log.head_seq, b"")
                log.tree = _Resumed(self.trusted[log.key])
                log.tree.summary.log_id = log.log_id
                if s.get("tree_size") is not None:
                    log.tree.tree = CompactRange.from_hex(int(s["tree_size"]), s["tree_nodes"])
            # stored and committed, not verified yet (waiting for a seq, or for the genesis)
            for payload in self.source.records_of(log.log_id, log.head_seq):
                log.pending[int(orjson.loads(payload)["seq"])] = payload
            # What they complete is verified now: their offsets are committed, so nothing
            # re-delivered would call _advance for this log (a quiet pod: never).
            self._advance(log)

    # -- consuming -------------------------------------------------------------------------
    def feed(self, payloads: Sequence[bytes], keep: Callable[[Any, bytes], object] = _ignore
             ) -> Fed:
        """Verifies what `payloads` complete. Records of a log's verified range are never
        stored again (a re-delivery is the same; a rewritten copy must not replace the
        original), nor the second of two different records with one seq. `keep`: called with
        each record the store should keep, as parsed here, and its bytes, in `Fed.store`'s
        order (the consumer builds the store's columns from this one parse: rows.Rows.add)."""
        fed = Fed()
        replayed: dict[str, dict[int, bytes]] = {}
        now_ms = time.time_ns() // 1_000_000
        loads, store = orjson.loads, fed.store.append
        for payload in payloads:
            try:
                record = loads(payload)
                log_id, seq = str(record.get("log_id") or ""), int(record["seq"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                continue  # unreadable: the store skips it too
            if not log_id:  # written before log identities: stored, not verifiable here
                store(payload)
                keep(record, payload)
                continue
            log = self.logs.get(log_id)
            if log is None:
                log = self.logs[log_id] = LogState(log_id)
            log.last_record_ms = now_ms
            fed.changed.add(log_id)
            if self._route(log, seq, record, payload, replayed):
                store(payload)
                keep(record, payload)
        for log_id, seqs in replayed.items():
            self._check_replayed(self.logs[log_id], seqs)
        for log_id in fed.changed:
            self._advance(self.logs[log_id])
        return fed

    def _route(self, log: LogState, seq: int, record: Any, payload: bytes,
               replayed: dict[str, dict[int, bytes]]) -> bool:
        """Where a record of `log` goes; True: to the store (verified when its run is complete,
        or kept unverified), False: not stored (a replay, checked against the store after the
        batch, or a conflicting copy)."""
        if seq < log.first_seq:
            return True  # before a partial start: kept, not verified
        if log.head_seq and seq <= log.head_seq:
            replayed.setdefault(log.log_id, {})[seq] = payload
            return False
        if log.status not in ("waiting", "verified"):
            return True  # kept as published, not verified
        first = log.pending.setdefault(seq, payload)
        if first != payload:
            self._break(log, seq, "conflicting_duplicate", "two different records with "
                        f"seq {seq} arrived")
            return False
        if first is payload:  # its chain fields, from this parse: not read from the bytes again
            fields = parsed_fields(record, payload)
            if fields is not None:
                log.claims[seq] = (payload, fields)
        return True

    def _check_replayed(self, log: LogState, seqs: dict[int, bytes]) -> None:
        """Records at or below the head: a re-delivery must be the record verified there."""
        stored = self.source.records_at(log.log_id, sorted(seqs))
        for seq in sorted(seqs):
            if seq in stored and stored[seq] != seqs[seq]:
                self._break(log, seq, "conflicting_duplicate", f"a record with seq {seq} "
                            "differs from the one verified (a rewritten copy of the log)")
                return

    def _advance(self, log: LogState) -> None:
        if log.status == "waiting" and not self._start(log):
            return
        run: list[bytes] = []
        fields: list[ChainFields | None] = []
        while log.status == "verified" and (seq := log.head_seq + 1 + len(run)) in log.pending:
            payload = log.pending.pop(seq)
            claim = log.claims.pop(seq, None)
            run.append(payload)
            fields.append(claim[1] if claim is not None and claim[0] is payload else None)
        if run:
            self._verify(log, run, fields)
        log.waiting_since = (log.waiting_since or self.clock()) if log.pending else None

    def _partial_start(self, log: LogState) -> bool:
        """A log seen without its genesis: verified from its first checkpoint or seal with a
        compact range that a trusted key signed, and the records chained to it before."""
        for seq in sorted(log.pending):
            payload = log.pending[seq]
            if b'"compact_range"' not in payload:
                continue
            record = orjson.loads(payload)
            if record.get("type") not in (RECORD_TYPE_CHECKPOINT, RECORD_TYPE_SEAL) \
                    or not record.get("compact_range"):
                continue
            signer = next((h for h, k in self.trusted.items() if verify_signature(k, record)),
                          None)
            if signer is None:
                log.status, log.reason = "untrusted", "untrusted_key"
                log.detail = (f"the log's {record['type']} at seq {seq} (its genesis not seen) "
                              "is signed by no trusted log key")
                log.drop_pending()
                return False
            start = seq
            while start - 1 in log.pending:
                start -= 1
            log.pending = {s: p for s, p in log.pending.items() if s >= start}
            log.claims.clear()  # optional: read from the bytes instead
            log.key, log.status, log.first_seq = signer, "verified", start
            log.tree = _Resumed(self.trusted[signer])
            log.head_seq, log.head = start - 1, b""
            log.detail = (f"verified from seq {start} (its genesis and the records before were "
                          f"not on the topics when the fleet read them); key from the "
                          f"{record['type']} at seq {seq}")
            return True
        return False

    def _start(self, log: LogState) -> bool:
        """A log starts at its genesis, whose key must be trusted."""
        if not log.pending:
            return False
        first = min(log.pending)
        record = orjson.loads(log.pending[first])
        if record.get("type") != RECORD_TYPE_GENESIS:
            if log.waiting_since is None:
                log.waiting_since = self.clock()
            return False  # the genesis may be on its way (another topic); gaps() decides
        log.key = str(record.get("public_key", ""))
        log.identity = dict(record.get("identity") or {})
        key = self.trusted.get(log.key)
        if key is None:
            log.status, log.reason = "untrusted", "untrusted_key"
            log.detail = f"the genesis names key {log.key[:16]}…, not a trusted log key"
            log.drop_pending()
            return False
        log.status, log.tree = "verified", _Resumed(key)
        log.head_seq, log.head = first - 1, b""
        return True

    def _verify(self, log: LogState, run: list[bytes], fields: list[ChainFields | None]
                ) -> None:
        assert log.tree is not None
        key = self.trusted[log.key]
        log.tree.through = log.head_seq if log.head else 0
        report = verify_chain([log.head, *run] if log.head else run, key,
                              allow_unsigned_tail=True, tree=log.tree,
                              fields=[None, *fields] if log.head else fields)
        log.tree.summary.notes.clear()
        if report.broken is not None:
            self._break(log, report.broken.seq, report.broken.reason, report.broken.detail)
            return
        # The head fed again to join the run was counted with the run before.
        again = 1 if log.head and b'"type":"checkpoint"' in log.head else 0
        log.head_seq, log.head = log.head_seq + len(run), run[-1]
        log.verified += len(run)
        log.checkpoints += report.checkpoints - again
        if self.witnesses.keys:
            self._witness(log, run)

    def _witness(self, log: LogState, run: list[bytes]) -> None:
        """The run's checkpoints and cosignatures, in order (verified: the chain holds them)."""
        for payload in run:
            if b'"type":"checkpoint"' in payload:
                log.witness.checkpoint(orjson.loads(payload))
            elif b'"type":"cosignature"' in payload:
                record = orjson.loads(payload)
                if record.get("type") != RECORD_TYPE_COSIGNATURE:
                    continue
                fork = log.witness.cosignature(record, log.log_id, self.witnesses,
                                               lambda seq: self._record_at(log, seq))
                if fork is not None:
                    self._break(log, int(record["seq"]), "cosignature_mismatch", fork)
                    return

    def _record_at(self, log: LogState, seq: int) -> dict[str, Any] | None:
        found = self.source.records_at(log.log_id, [seq]).get(seq)
        return orjson.loads(found) if found is not None else None

    def _break(self, log: LogState, seq: int, reason: str, detail: str) -> None:
        log.status, log.break_seq, log.reason, log.detail = "broken", seq, reason, detail
        log.drop_pending()
        log.tree = None

    # -- time ------------------------------------------------------------------------------
    def gaps(self) -> set[str]:
        """Logs whose next seq has been missing for gap_seconds (or that hold too many records
        waiting for it): a gap, or a log seen without its genesis. Their ids."""
        now, found = self.clock(), set()
        for log in self.logs.values():
            if log.waiting_since is None or log.status not in ("waiting", "verified"):
                continue
            if now - log.waiting_since < self.gap_seconds and len(log.pending) < PENDING_MAX:
                continue
            found.add(log.log_id)
            if log.status == "waiting":
                first = min(log.pending)
                log.waiting_since = None
                if self._partial_start(log):
                    self._advance(log)
                    continue
                if log.status == "waiting":
                    log.status, log.reason = "no_genesis", "no_genesis"
                    log.detail = (f"the log's first record here is seq {first}, not its "
                                  "genesis, and no checkpoint or seal a trusted key signed "
                                  "follows: its records are not verified")
                log.drop_pending()
            else:
                missing = log.head_seq + 1
                self._break(log, missing, "seq_gap", f"seq {missing} missing for "
                            f"{self.gap_seconds:g} s; the log goes on at {min(log.pending)}")
            log.waiting_since = None
        return found

    def states(self, log_ids: Iterable[str]) -> list[dict[str, Any]]:
        return [self.logs[i].saved() for i in log_ids]

