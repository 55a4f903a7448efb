"""`vllm-audit prove`: an offline proof bundle for one record of a record log.

The bundle (JSON) holds everything a verifier needs and nothing it must trust: the record's
stored bytes, its leaf index, an RFC 9162 inclusion path to the root of a checkpoint, that
checkpoint as a C2SP signed note (with whatever witness cosignatures it has) and the log's
public key. `scripts/check_proof.py` checks one in a few dozen lines with no part of this
project: leaf hash, path to the root, the note's root and size, the log's signature, and the
cosignatures of the witness keys it is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import orjson

from vllm_audit_agent.records.chain import (
    RECORD_TYPE_CHECKPOINT,
    RECORD_TYPE_COSIGNATURE,
    RECORD_TYPE_GENESIS,
    RECORD_TYPE_REQUEST,
    RECORD_TYPE_SEAL,
)
from vllm_audit_agent.records.merkle import (
    CompactRange,
    inclusion_proof,
    leaf_hash,
    subtree_after,
)
from vllm_audit_agent.records.note import origin_of, parse

BUNDLE_FORMAT = "vllm-audit/proof/v1"


class LeafArray(Sequence[bytes]):
    """Leaf hashes packed 32 bytes each (a list of bytes objects costs twice as much)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def append(self, leaf: bytes) -> None:
        self.data += leaf

    def __len__(self) -> int:
        return len(self.data) // 32

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        return bytes(self.data[32 * index:32 * index + 32])

    def __iter__(self) -> Iterator[bytes]:
        return (self[i] for i in range(len(self)))


@dataclass
class _Scan:
    log_id: str = ""
    first_seq: int | None = None
    base: CompactRange | None = None  # the tree before the first leaf kept
    target: tuple[int, bytes] | None = None  # (position among the leaves kept, record bytes)
    checkpoint: tuple[int, str] | None = None  # (tree size, signed note text), the newest

    def restart(self, log_id: str) -> None:
        self.log_id, self.first_seq, self.base = log_id, None, CompactRange()
        self.target = self.checkpoint = None


def _wanted(record: dict[str, Any], seq: int | None, trail_id: str | None) -> bool:
    if seq is not None:
        return int(record["seq"]) == seq
    return record.get("type") == RECORD_TYPE_REQUEST and (
        record.get("trail_id") == trail_id or record.get("request_id") == trail_id)


def _note_checkpoint(scan: _Scan, record: dict[str, Any]) -> None:
    if record.get("type") not in (RECORD_TYPE_CHECKPOINT, RECORD_TYPE_COSIGNATURE):
        return
    size, note = int(record.get("tree_size") or 0), str(record.get("note", ""))
    held = scan.checkpoint
    if held is None or size > held[0] or (size == held[0] and len(note) > len(held[1])):
        scan.checkpoint = (size, note)  # the newest; a cosigned copy over the bare one


def scan_log(payloads: Iterable[bytes], seq: int | None, trail_id: str | None
             ) -> tuple[_Scan, LeafArray]:
    """The leaves of the log's tree (from its genesis, or from its first record when the seal
    before it is found), the record wanted and the newest checkpoint."""
    scan, leaves = _Scan(), LeafArray()
    for payload in payloads:
        record = orjson.loads(payload)
        if not record.get("log_id"):
            continue  # written before log identities: in no tree
        if record.get("type") == RECORD_TYPE_GENESIS:
            scan.restart(str(record["log_id"]))
            leaves.data.clear()
        elif not scan.log_id:
            scan.log_id, scan.first_seq = str(record["log_id"]), int(record["seq"])
        if record.get("type") == RECORD_TYPE_SEAL and scan.base is None and \
                record.get("compact_range") and scan.first_seq is not None and \
                int(record.get("removed_last_seq", -1)) + 1 == scan.first_seq:
            scan.base = CompactRange.from_hex(int(record["tree_size"]), record["compact_range"])
        if _wanted(record, seq, trail_id):
            scan.target = (len(leaves), payload)
        _note_checkpoint(scan, record)
        leaves.append(leaf_hash(payload))
    return scan, leaves


def build(payloads: Iterable[bytes], *, seq: int | None = None, trail_id: str | None = None,
          checkpoint_note: str | None = None, public_key_hex: str = "") -> dict[str, Any]:
    """The proof bundle for the record at `seq` (or the newest record of `trail_id`)."""
    if (seq is None) == (trail_id is None):
        raise ValueError("prove needs exactly one of --seq or --trail-id")
    scan, leaves = scan_log(payloads, seq, trail_id)
    what = f"seq {seq}" if seq is not None else f"trail {trail_id!r}"
    if scan.target is None:
        raise ValueError(f"{what}: no such record in this log's Merkle tree (records written "
                         "before log identities cannot be proven)")
    if scan.base is None:
        raise ValueError(f"{what}: the log starts at seq {scan.first_seq} and no retention seal "
                         "gives the tree before it")
    if checkpoint_note is not None:
        scan.checkpoint = (parse(checkpoint_note).checkpoint.size, checkpoint_note)
    index = scan.base.size + scan.target[0]
    if scan.checkpoint is None or scan.checkpoint[0] <= index:
        raise ValueError(f"{what}: no checkpoint covers the record yet (a running log writes "
                         "one every --checkpoint-interval seconds)")
    size, note_text = scan.checkpoint
    note = parse(note_text)
    if note.checkpoint.origin != origin_of(scan.log_id):
        raise ValueError(f"the checkpoint is for {note.checkpoint.origin}, not this log")
    if size > scan.base.size + len(leaves):
        raise ValueError(f"the checkpoint's tree ({size}) is larger than this log "
                         f"({scan.base.size + len(leaves)})")
    path = inclusion_proof(index, size, subtree_after(scan.base, leaves))
    return {
        "format": BUNDLE_FORMAT, "log_id": scan.log_id, "origin": origin_of(scan.log_id),
        "leaf_index": index, "tree_size": size, "record": scan.target[1].decode(),
        "inclusion_path": [node.hex() for node in path], "checkpoint": note_text,
        "log_public_key": public_key_hex,
    }
