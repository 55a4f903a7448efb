"""`vllm-audit verify`: checks a record chain and names its first break.

Sources: a record log directory (read from a scratch copy: never modified), an export file
(JSONL, one canonical record per line) or Kafka topics (every partition read from the start
to the end offsets seen at the start, then ordered by `seq`; an exact re-delivery of a record
is collapsed and counted, two different records with one `seq` are a break).

Checks, record by record in order (chain.py defines the form):
  seq_gap / seq_order   `seq` is not the previous one + 1 (a record missing, moved or added)
  hash_mismatch         the record's bytes do not hash to its `hash` (a changed byte)
  prev_hash_mismatch    `prev_hash` is not the previous record's `hash`
  bad_checkpoint_signature   a checkpoint's Ed25519 signature does not verify
  checkpoint_head_mismatch   a checkpoint names a head other than the record before it
  unreadable            not JSON, or without the chain fields
  conflicting_duplicate (Kafka) two different records carry one `seq`
The first record present anchors the chain; it must still hash correctly. Beyond the chain
(tree_check.py): the log's identity from its genesis, its Merkle tree against every
checkpoint's root and signed note, and — for a log directory — that a start after the genesis
is covered by a retention seal (an export or a Kafka topic may start anywhere: their first
records before a checkpoint are checked by the chain alone, and a note says so). Anchors
(checkpoints held elsewhere) name truncation and rewriting; witness keys and a required number
of cosignatures name a log whose newest records no witness saw.

Unsigned tail: request and access records after the last valid checkpoint are not covered by
any signature (a truncated log looks exactly like a shorter one up to there). They are reported as
`unverified_after_checkpoint` with the first such seq and count as a failure (exit 1), unless
`allow_unsigned_tail` (a live log always has a few seconds of them). A cleanly stopped agent
ends its log with a checkpoint; an export extends to the checkpoint after its range.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vllm_audit_agent.records.chain import (
    RECORD_TYPE_CHECKPOINT,
    RECORD_TYPE_COSIGNATURE,
    RECORD_TYPE_ERASURE,
    RECORD_TYPE_GENESIS,
    RECORD_TYPE_SEAL,
    record_hash,
    stored_hash_matches,
    verify_signature,
)
from vllm_audit_agent.records.fields import ChainFields, chain_fields, hash_matches
from vllm_audit_agent.records.read_only import read_records
from vllm_audit_agent.records.tree_check import TREE_BREAK_REASONS, TreeCheck, TreeFinding

BREAK_REASONS = ("seq_gap", "seq_order", "hash_mismatch", "prev_hash_mismatch",
                 "bad_checkpoint_signature", "checkpoint_head_mismatch", "unreadable",
                 "conflicting_duplicate", "unverified_after_checkpoint", *TREE_BREAK_REASONS)
#: Records whose own signature or witness signatures cover them: never an unsigned tail.
_SELF_SIGNED = (RECORD_TYPE_CHECKPOINT, RECORD_TYPE_GENESIS, RECORD_TYPE_SEAL,
                RECORD_TYPE_COSIGNATURE, RECORD_TYPE_ERASURE)


@dataclass
class Break:
    seq: int
    reason: str
    detail: str


@dataclass
class Report:
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    last_checkpoint_seq: int | None = None
    duplicates_collapsed: int = 0
    unsigned_tail: int = 0
    #: The first request or access record after the last checkpoint (None: none).
    unsigned_from: int | None = None
    log_id: str = ""
    tree_size: int = 0
    root_hash: str = ""
    sealed_start: bool = False
    anchors_checked: int = 0
    witnessed_size: int = 0
    broken: Break | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return self.broken is None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["intact"] = self.intact
        return out


def verify_chain(payloads: Iterable[bytes], public_key: Ed25519PublicKey,
                 allow_unsigned_tail: bool = False, tree: TreeCheck | None = None,
                 sealed_start: bool = False,
                 fields: Sequence[ChainFields | None] | None = None) -> Report:
    """`tree`: the identity/tree/anchor checks (a plain TreeCheck by default).
    `sealed_start`: a log directory, which must start at its genesis or a seal.
    `fields`: one per payload, its chain fields found already (fields.parsed_fields: the
    fleet consumer parses each record once); None for a payload: read from its bytes. A claim
    either way: checked as one read from the bytes is."""
    report = Report()
    tree = tree if tree is not None else TreeCheck(public_key)
    found = _verify_records(payloads, public_key, tree, report, fields)
    if report.broken is not None:
        return report
    if found is not None:
        report.broken = Break(found.seq, found.reason, found.detail)
        return report
    if not sealed_start:
        tree.accept_partial_start()
    finding = tree.finish(report.last_seq)
    summary = tree.summary
    report.log_id, report.tree_size, report.root_hash = summary.log_id, summary.tree_size, \
        summary.root_hash
    report.sealed_start, report.anchors_checked = summary.sealed_start, summary.anchors_checked
    report.witnessed_size = summary.witnessed_size
    report.notes.extend(summary.notes)
    if finding is not None:
        report.broken = Break(finding.seq, finding.reason, finding.detail)
        return report
    _unsigned_tail(report, allow_unsigned_tail)
    return report


def _verify_records(payloads: Iterable[bytes], public_key: Ed25519PublicKey, tree: TreeCheck,
                    report: Report, fields: Sequence[ChainFields | None] | None = None
                    ) -> TreeFinding | None:
    """The chain checks record by record, and the tree's; the tree's first finding.

    A plain record (not of a signed type) whose chain fields, read from its bytes
    (fields.py), pass every check is taken without parsing it; any other record, and any
    that fails a check that way, is parsed and checked exactly, so a break is always named
    from the parsed record."""
    prev: tuple[int, str] | None = None  # (seq, hash) of the record before
    since_checkpoint: int | None = None  # first seq not yet covered by a checkpoint
    claimed: Iterable[tuple[bytes, ChainFields | None]] = \
        zip(payloads, fields, strict=True) if fields is not None else \
        ((payload, None) for payload in payloads)
    for payload, known in claimed:
        fast = known if known is not None else chain_fields(payload)
        if fast is not None and (prev is None or (fast.seq == prev[0] + 1
                                                  and fast.prev_hash == prev[1])) \
                and hash_matches(payload, fast):
            record: dict[str, Any] = {"seq": fast.seq, "type": fast.type, "log_id": fast.log_id,
                                      "prev_hash": fast.prev_hash}
            if since_checkpoint is None:
                since_checkpoint = fast.seq
            seq, stored_hash = fast.seq, fast.hash
        else:
            parsed = _check_exact(payload, prev, public_key, report)
            if parsed is None:
                return None
            record = parsed
            seq, stored_hash = int(record["seq"]), str(record["hash"])
            if since_checkpoint is None and record.get("type") not in _SELF_SIGNED:
                since_checkpoint = seq
            if record.get("type") == RECORD_TYPE_CHECKPOINT:
                report.checkpoints += 1
                report.last_checkpoint_seq = seq
                since_checkpoint = None
        report.records += 1
        if report.first_seq is None:
            report.first_seq = seq
        prev = (seq, stored_hash)
        report.last_seq = seq
        finding = tree.add(record, payload)
        if finding is not None:
            return finding
    report.unsigned_from = since_checkpoint
    return None


def _check_exact(payload: bytes, prev: tuple[int, str] | None, public_key: Ed25519PublicKey,
                 report: Report) -> dict[str, Any] | None:
    """One record parsed and checked against the one before (`prev`: its seq and hash): the
    record, or None with `report.broken` set (a record read and broken is counted)."""
    expected = prev[0] + 1 if prev is not None else None
    try:
        record: dict[str, Any] = orjson.loads(payload)
        seq, stored_hash = int(record["seq"]), str(record["hash"])
        prev_hash = str(record["prev_hash"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        report.broken = Break(expected or 0, "unreadable", f"record after seq "
                              f"{expected and expected - 1}: {exc}")
        return None
    broken: Break | None
    if expected is not None and seq != expected:
        reason = "seq_gap" if seq > expected else "seq_order"
        broken = Break(expected, reason, f"expected seq {expected}, found {seq}")
    elif not stored_hash_matches(payload, stored_hash) and record_hash(record) != stored_hash:
        broken = Break(seq, "hash_mismatch", "the record's bytes do not hash to its hash "
                       "(altered)")
    elif prev is not None and prev_hash != prev[1]:
        broken = Break(seq, "prev_hash_mismatch", f"prev_hash is not the hash of seq {prev[0]}")
    else:
        broken = _signatures(record, seq, prev, public_key)
    if broken is None:
        return record
    report.records += 1  # read, and broken
    if report.first_seq is None:
        report.first_seq = seq
    report.broken = broken
    return None


def _signatures(record: dict[str, Any], seq: int, prev: tuple[int, str] | None,
                public_key: Ed25519PublicKey) -> Break | None:
    """A checkpoint's or an erasure's own signature, and the head a checkpoint names."""
    if record.get("type") == RECORD_TYPE_ERASURE and not verify_signature(public_key, record):
        # An erasure signs what it destroyed (erasure.py): the same break as a checkpoint's.
        return Break(seq, "bad_checkpoint_signature", "the erasure record's signature does "
                     "not verify with the public key")
    if record.get("type") != RECORD_TYPE_CHECKPOINT:
        return None
    if not verify_signature(public_key, record):
        return Break(seq, "bad_checkpoint_signature", "the checkpoint's signature does not "
                     "verify with the public key")
    if prev is not None and (record.get("head_seq") != prev[0]
                             or record.get("head_hash") != prev[1]):
        return Break(seq, "checkpoint_head_mismatch", f"checkpoint names head "
                     f"{record.get('head_seq')}, the record before it is {prev[0]}")
    return None


def _unsigned_tail(report: Report, allow_unsigned_tail: bool) -> None:
    since_checkpoint = report.unsigned_from
    if since_checkpoint is not None and report.last_seq is not None:
        report.unsigned_tail = report.last_seq - since_checkpoint + 1
        message = (f"{report.unsigned_tail} records from seq {since_checkpoint} are after the "
                   "last valid checkpoint: not covered by a signature")
        if allow_unsigned_tail:
            report.notes.append(message)
        else:
            report.broken = Break(since_checkpoint, "unverified_after_checkpoint", message)
    if report.records == 0:
        report.notes.append("no records")


# -- sources ---------------------------------------------------------------------------------
def file_payloads(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


def path_payloads(path: Path) -> Iterator[bytes]:
    if path.is_dir():
        return read_records(path)
    if path.is_file():
        return file_payloads(path)
    raise ValueError(f"{path}: no such file or directory")


def split_by_log(payloads: Iterable[bytes]) -> dict[str, list[bytes]]:
    """Records by the log they belong to (`log_id`; "" for records written before log
    identities and unreadable ones): several agents may publish to one topic."""
    logs: dict[str, list[bytes]] = {}
    for payload in payloads:
        try:
            log_id = str(orjson.loads(payload).get("log_id") or "")
        except (orjson.JSONDecodeError, AttributeError):
            log_id = ""
        logs.setdefault(log_id, []).append(payload)
    return logs


def order_by_seq(payloads: Iterable[bytes], report: Report) -> list[bytes]:
    """Kafka gives no order across partitions: sort by seq; collapse exact re-deliveries."""
    by_seq: dict[int, bytes] = {}
    conflicts: list[int] = []
    unreadable: list[bytes] = []
    for payload in payloads:
        try:
            seq = int(orjson.loads(payload)["seq"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            unreadable.append(payload)
            continue
        seen = by_seq.get(seq)
        if seen is None:
            by_seq[seq] = payload
        elif seen == payload:
            report.duplicates_collapsed += 1
        else:
            conflicts.append(seq)
    if conflicts:
        report.broken = Break(min(conflicts), "conflicting_duplicate",
                              f"{len(conflicts)} seqs carried by two different records")
    return [by_seq[s] for s in sorted(by_seq)] + unreadable


async def kafka_payloads(bootstrap: str, topics: list[str], timeout: float = 60.0
                         ) -> list[bytes]:
    """Every record in `topics` (all partitions, from the start to the end offsets)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    try:
        await consumer.start()
    except KafkaError as exc:  # the CLI prints an OSError as one line, not a traceback
        await consumer.stop()
        raise ConnectionError(f"Kafka at {bootstrap} cannot be reached: {exc}") from None
    out: list[bytes] = []
    try:
        partitions = []
        known = await consumer.topics()  # fetches the cluster's metadata
        for topic in topics:
            if topic not in known:
                raise ValueError(f"topic {topic!r} does not exist on {bootstrap}")
            for p in consumer.partitions_for_topic(topic) or set():
                partitions.append(TopicPartition(topic, p))
        if not partitions:
            return out
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        try:
            async with asyncio.timeout(timeout):
                while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                    batches = await consumer.getmany(*partitions, timeout_ms=500)
                    for records in batches.values():
                        out.extend(r.value for r in records if r.value is not None)
        except TimeoutError:
            behind = {f"{tp.topic}[{tp.partition}]": f"{await consumer.position(tp)}/{end}"
                      for tp, end in ends.items()}
            raise TimeoutError(f"Kafka at {bootstrap}: {len(out)} records read in {timeout:g} s, "
                               f"the end offsets seen at the start not reached (position/end: "
                               f"{behind})") from None
    finally:
        await consumer.stop()
    return out
