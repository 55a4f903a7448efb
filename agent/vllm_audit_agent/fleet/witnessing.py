"""Witness cosignatures of one log as the fleet consumes it (C2SP tlog-cosignature, records of
type `cosignature` that the agent appends when a witness answers: delivery/cosigning.py).

A cosignature counts when its signature verifies with one of the configured witness keys and
the checkpoint it signs is the one the log itself signed at that size (the checkpoint record
at its `checkpoint_seq`, verified before it in the chain): a witness that cosigned another
root at that size saw another history of the log — a fork, which breaks the log by name. A
witness's cosignature at size T covers every size up to T (the witness checked a consistency
proof; the fleet checked the chain), so the log is witnessed up to the `required`-th largest
size among the witnesses' newest cosigned sizes.

Checkpoints beyond that size wait to be witnessed; the oldest one's time (when the agent
wrote it) is how long the log has gone unwitnessed. The waiting list is thinned beyond
UNCOVERED_KEPT entries (every other one dropped, the oldest kept): the age it gives is then
at most one dropped interval older than the truth — an alert comes early, never late.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vllm_audit_agent.records.chain import raw_public_key
from vllm_audit_agent.records.note import cosignature_time, origin_of, parse

#: Recent checkpoints kept in memory for the cosignatures that follow them (older: the store).
CHECKPOINTS_KEPT = 64
UNCOVERED_KEPT = 1024
#: Waiting checkpoints saved with the log's state (thinned as above).
UNCOVERED_SAVED = 64


@dataclass(frozen=True)
class WitnessPolicy:
    """The witnesses the fleet trusts, how many must cosign, and how long a checkpoint may
    wait for them before the log is flagged unwitnessed. No keys: cosignatures are not checked."""
    keys: tuple[Ed25519PublicKey, ...] = ()
    required: int = 1
    unwitnessed_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.keys and not 1 <= self.required <= len(self.keys):
            raise ValueError(f"{self.required} required cosignatures need as many witness "
                             f"keys (given {len(self.keys)})")


def _thin(entries: list[tuple[int, int]], keep: int) -> list[tuple[int, int]]:
    while len(entries) > keep:
        entries = entries[:1] + entries[2::2]
    return entries


@dataclass
class Witnessing:
    """One log's cosignature state."""
    #: witness key (raw, hex) -> the largest tree size it validly cosigned
    sizes: dict[str, int] = field(default_factory=dict)
    witnessed_size: int = 0
    #: the newest checkpoint's tree size
    tree_size: int = 0
    cosignatures: int = 0
    #: (tree size, when written, ms) of checkpoints beyond witnessed_size, oldest first
    uncovered: list[tuple[int, int]] = field(default_factory=list)
    #: checkpoint seq -> (tree size, root hex), recent
    checkpoints: dict[int, tuple[int, str]] = field(default_factory=dict)

    def saved(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "witnessed_size": self.witnessed_size,
                "tree_size": self.tree_size, "cosignatures": self.cosignatures,
                "uncovered": _thin(self.uncovered, UNCOVERED_SAVED)}

    @classmethod
    def from_saved(cls, saved: dict[str, Any] | None) -> Witnessing:
        s = saved or {}
        return cls({str(k): int(v) for k, v in dict(s.get("sizes") or {}).items()},
                   int(s.get("witnessed_size", 0)), int(s.get("tree_size", 0)),
                   int(s.get("cosignatures", 0)),
                   [(int(a), int(b)) for a, b in s.get("uncovered") or ()])

    def unwitnessed_since_ms(self) -> int:
        """When the oldest checkpoint no witness quorum covers was written (0: none waits)."""
        return self.uncovered[0][1] if self.uncovered else 0

    def checkpoint(self, record: dict[str, Any]) -> None:
        if "tree_size" not in record:
            return  # a checkpoint from before trees: nothing a witness signs
        size = int(record["tree_size"])
        self.checkpoints[int(record["seq"])] = (size, str(record.get("root_hash", "")))
        if len(self.checkpoints) > CHECKPOINTS_KEPT:
            del self.checkpoints[min(self.checkpoints)]
        self.tree_size = max(self.tree_size, size)
        if size > self.witnessed_size:
            written = int(record.get("recorded_unix_ms") or record.get("time_unix_ms") or 0)
            self.uncovered = _thin([*self.uncovered, (size, written)], UNCOVERED_KEPT)

    def cosignature(self, record: dict[str, Any], log_id: str, policy: WitnessPolicy,
                    checkpoint_at: Callable[[int], dict[str, Any] | None]) -> str | None:
        """Counts the record's valid cosignatures; the detail of a fork, else None.
        `checkpoint_at(seq)`: the log's checkpoint record at seq from the store."""
        try:
            note = parse(str(record.get("note", "")))
        except ValueError:
            return None  # nothing a witness signed can be read from it: it counts for nothing
        signers = _valid_signers(note, policy.keys)
        if not signers:
            return None
        seq = int(record.get("checkpoint_seq", -1))
        cp = note.checkpoint
        known = self.checkpoints.get(seq) or _size_root(checkpoint_at(seq))
        if known is None:
            return None  # its checkpoint is not among the records verified here
        if (cp.origin, cp.size, cp.root.hex()) != (origin_of(log_id), *known):
            return (f"witness {record.get('witness', '?')} cosigned tree size {cp.size}, root "
                    f"{cp.root.hex()[:16]}… of {cp.origin}; the log's checkpoint at seq {seq} "
                    f"is size {known[0]}, root {known[1][:16]}…: another history (a fork)")
        self.cosignatures += 1
        for signer in signers:
            self.sizes[signer] = max(self.sizes.get(signer, 0), cp.size)
        self._cover(policy.required)
        return None

    def _cover(self, required: int) -> None:
        ranked = sorted(self.sizes.values(), reverse=True)
        if len(ranked) < required:
            return
        self.witnessed_size = max(self.witnessed_size, ranked[required - 1])
        self.uncovered = [u for u in self.uncovered if u[0] > self.witnessed_size]


def _valid_signers(note: Any, keys: Sequence[Ed25519PublicKey]) -> list[str]:
    found = []
    for key in keys:
        if any(cosignature_time(note, name, key) is not None for name, _ in note.signatures):
            found.append(raw_public_key(key).hex())
    return found


def _size_root(record: dict[str, Any] | None) -> tuple[int, str] | None:
    if record is None or record.get("type") != "checkpoint" or "tree_size" not in record:
        return None
    return int(record["tree_size"]), str(record.get("root_hash", ""))
