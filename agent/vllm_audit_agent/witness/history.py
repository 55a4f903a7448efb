"""Whether a consistency proof that does not verify shows a fork.

RFC 9162 §2.1.4.2 rebuilds two roots from a proof: the old tree's (`fr`) and the new tree's
(`sr`). When the proof rebuilds the new checkpoint's root but not the root the witness
cosigned at the old size, the new tree provably holds another first `old` leaves than the tree
the witness cosigned (short of a SHA-256 collision): a fork, made with the log's key. Anything
else (a wrong length, a wrong hash) is a bad proof. Nobody without the log's key can make a
refusal look like a fork: the new root is under the log's signature.

When the old size is a power of two the old root is the proof's first node, so the proof is
built on the witness's own root and a fork cannot be told from a bad proof (it is reported as
the latter).
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm_audit_agent.records.merkle import node_hash


def consistency_roots(old_size: int, new_size: int, old_root: bytes,
                      proof: Sequence[bytes]) -> tuple[bytes, bytes] | None:
    """(old root, new root) the proof rebuilds for 0 < old_size < new_size, or None when the
    proof's shape does not fit the sizes."""
    if not 0 < old_size < new_size or not proof:
        return None
    path = list(proof)
    if old_size & (old_size - 1) == 0:
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


def shows_fork(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
               proof: Sequence[bytes]) -> bool:
    """The proof (which failed to verify) rebuilds `new_root` from another old tree."""
    roots = consistency_roots(old_size, new_size, old_root, proof)
    return roots is not None and roots[1] == new_root and roots[0] != old_root
