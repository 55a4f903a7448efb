"""The record log's Merkle tree: RFC 9162 (Certificate Transparency v2, as RFC 6962) hashing.

Each record of a log, in `seq` order from its genesis, is one leaf; the leaf's data is the
record's stored canonical bytes (what Kafka and an export carry):

    leaf  = SHA-256(0x00 || record bytes)
    node  = SHA-256(0x01 || left || right)
    MTH of n > 1 leaves = node(MTH(first k), MTH(rest)), k the largest power of two below n

The agent keeps only a *compact range* (the roots of the perfect subtrees covering the leaves
so far, largest first: at most 64 hashes), which is enough for the root at any size and, with
the leaves appended since, for a consistency proof from that size. Proofs over a whole log
(`vllm-audit prove`, `verify`) are computed from its leaf hashes.

The proof algorithms are the RFC's own (PATH, SUBPROOF, and the verification procedures of
§2.1.3.2 and §2.1.4.2); tests check them against an independent implementation (pymerkle).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: A function giving the root of the perfect or rightmost subtree over leaves [lo, hi).
Subtree = Callable[[int, int], bytes]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


@dataclass
class CompactRange:
    """The roots of the perfect subtrees that cover leaves [0, size), largest first."""
    size: int = 0
    nodes: list[bytes] = field(default_factory=list)

    def append(self, leaf: bytes) -> None:
        node, size = leaf, self.size
        while size & 1:
            node = node_hash(self.nodes.pop(), node)
            size >>= 1
        self.nodes.append(node)
        self.size += 1

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        root = self.nodes[-1]
        for node in reversed(self.nodes[:-1]):
            root = node_hash(node, root)
        return root

    def spans(self) -> list[tuple[int, int]]:
        """The leaf range [lo, hi) of each node, in order."""
        out, lo = [], 0
        for bit in range(self.size.bit_length() - 1, -1, -1):
            if self.size >> bit & 1:
                out.append((lo, lo + (1 << bit)))
                lo += 1 << bit
        return out

    def copy(self) -> CompactRange:
        return CompactRange(self.size, list(self.nodes))

    def to_hex(self) -> list[str]:
        return [node.hex() for node in self.nodes]

    @classmethod
    def from_hex(cls, size: int, nodes: Sequence[str]) -> CompactRange:
        parsed = [bytes.fromhex(n) for n in nodes]
        if len(parsed) != size.bit_count() or any(len(n) != 32 for n in parsed):
            raise ValueError(f"a compact range of {size} leaves has {size.bit_count()} hashes of "
                             f"32 bytes, not {len(parsed)}")
        return cls(size, parsed)


def subtree_of_leaves(leaves: Sequence[bytes]) -> Subtree:
    """MTH over leaves[lo:hi], memoised (a proof asks for each node once or twice)."""
    cache: dict[tuple[int, int], bytes] = {}

    def subtree(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaves[lo]
        found = cache.get((lo, hi))
        if found is None:
            k = split_point(hi - lo)
            found = cache[(lo, hi)] = node_hash(subtree(lo, lo + k), subtree(lo + k, hi))
        return found
    return subtree


def subtree_after(base: CompactRange, leaves_after: Sequence[bytes]) -> Subtree:
    """Any node over leaves [lo, hi) with hi <= base.size + len(leaves_after), from `base` (the
    compact range of the leaves before) and the leaves after it. A node inside [0, base.size)
    is one of `base`'s nodes or a subtree of one; those are not known, so asking for one is an
    error — proofs never do: MTH's splits follow the compact range's decomposition."""
    spans = dict(zip(base.spans(), base.nodes, strict=True))
    later = subtree_of_leaves(leaves_after)
    m = base.size

    def subtree(lo: int, hi: int) -> bytes:
        if lo >= m:
            return later(lo - m, hi - m)
        node = spans.get((lo, hi))
        if node is not None:
            return node
        if hi <= m or hi - lo == 1:
            raise ValueError(f"node [{lo}, {hi}) is not known from a compact range of {m}")
        k = split_point(hi - lo)
        return node_hash(subtree(lo, lo + k), subtree(lo + k, hi))
    return subtree


def root_of(leaves: Sequence[bytes]) -> bytes:
    return subtree_of_leaves(leaves)(0, len(leaves)) if leaves else EMPTY_ROOT


# -- proofs (RFC 9162 §2.1.3.1 PATH, §2.1.4.1 SUBPROOF) --------------------------------------
def inclusion_proof(index: int, size: int, subtree: Subtree) -> list[bytes]:
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    proof: list[bytes] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = split_point(hi - lo)
        if m < k:
            proof.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo, m = lo + k, m - k
    proof.reverse()
    return proof


def consistency_proof(old_size: int, new_size: int, subtree: Subtree) -> list[bytes]:
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    lo, hi, m, whole = 0, new_size, old_size, True
    while True:
        n = hi - lo
        if m == n:
            if not whole:
                proof.append(subtree(lo, hi))
            break
        k = split_point(n)
        if m <= k:
            proof.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    proof.reverse()
    return proof


# -- verification (RFC 9162 §2.1.3.2, §2.1.4.2) ---------------------------------------------
def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ValueError("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("the inclusion proof is too short")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes],
                     root: bytes) -> bool:
    try:
        return root_from_inclusion(index, size, leaf, proof) == root
    except ValueError:
        return False


def consistency_roots(old_size: int, new_size: int, old_root: bytes,
                      proof: Sequence[bytes]) -> tuple[bytes, bytes] | None:
    """(old root, new root) that RFC 9162 §2.1.4.2 rebuilds from a proof for
    0 < old_size < new_size, or None when the proof's shape does not fit the sizes. (When the
    old size is a power of two the old root is the proof's first node, so it comes back as is.)"""
    if not 0 < old_size < new_size or not proof:
        return None
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return (fr, sr) if sn == 0 else None


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    return consistency_roots(old_size, new_size, old_root, proof) == (old_root, new_root)
