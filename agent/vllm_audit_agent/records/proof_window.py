"""What witnesses' consistency proofs need of the record log's tree: the compact range at the
newest size every witness has cosigned (the base), and the leaves appended since.

A proof from a size at or after the base to one at or before the newest leaf is computed from
these alone (merkle.subtree_after); a witness further behind cannot be given one. The leaves
are packed 32 bytes each and bounded: past `max_leaves` the oldest join the base, counted, and
a witness that far behind needs an operator.
"""

from __future__ import annotations

from collections import Counter

from vllm_audit_agent.records.merkle import CompactRange, consistency_proof, subtree_after

#: Leaves kept at most (32 bytes each: 32 MiB).
PROOF_LEAVES_MAX = 1 << 20


class ProofWindow:
    def __init__(self, counters: Counter[str], max_leaves: int = PROOF_LEAVES_MAX) -> None:
        self.counters = counters
        self.max_leaves = max_leaves
        self.base = CompactRange()
        self.leaves = bytearray()
        #: Off until a witness listens: then the log keeps leaves from the tree as it is.
        self.keeping = False

    def start(self, tree: CompactRange | None) -> None:
        """Proofs from now on start at the tree as it is (once: later calls keep the window)."""
        if not self.keeping:
            self.base = tree.copy() if tree is not None else CompactRange()
            self.leaves.clear()
        self.keeping = True

    def keep(self, leaf: bytes) -> None:
        self.leaves += leaf
        if len(self.leaves) > self.max_leaves * 32:
            self.base.append(bytes(self.leaves[:32]))
            del self.leaves[:32]
            self.counters["proof_leaves_dropped"] += 1

    def _leaf(self, i: int) -> bytes:
        return bytes(self.leaves[32 * i:32 * i + 32])

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 consistency proof between two sizes; ValueError when the leaves it needs
        are no longer kept (older than the newest size every witness has)."""
        base = self.base
        have = base.size + len(self.leaves) // 32
        if not base.size <= old_size <= new_size <= have:
            raise ValueError(f"no proof from {old_size} to {new_size}: the log keeps what proofs "
                             f"need from {base.size} to {have}")
        at_old = base.copy()
        for i in range(old_size - base.size):
            at_old.append(self._leaf(i))
        after = [self._leaf(i) for i in range(old_size - base.size, new_size - base.size)]
        return consistency_proof(old_size, new_size, subtree_after(at_old, after))

    def witnessed(self, size: int) -> None:
        """Every witness has cosigned the tree up to `size`: proofs need not start earlier."""
        move = min(size - self.base.size, len(self.leaves) // 32)
        for i in range(max(0, move)):
            self.base.append(self._leaf(i))
        if move > 0:
            del self.leaves[:32 * move]
