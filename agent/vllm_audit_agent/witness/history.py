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

from vllm_audit_agent.records.merkle import consistency_roots


def shows_fork(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
               proof: Sequence[bytes]) -> bool:
    """The proof (which failed to verify) rebuilds `new_root` from another old tree."""
    roots = consistency_roots(old_size, new_size, old_root, proof)
    return roots is not None and roots[1] == new_root and roots[0] != old_root
