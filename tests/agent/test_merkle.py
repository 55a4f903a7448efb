"""The record log's Merkle tree against an independent RFC 9162 implementation (pymerkle), and
its checkpoints as C2SP signed notes."""

from __future__ import annotations

import warnings

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree

from vllm_audit_agent.records import merkle, note


def _trees(n: int) -> tuple[InmemoryTree, list[bytes]]:
    data = [b"record %d" % i for i in range(n)]
    tree = InmemoryTree(algorithm="sha256")
    for item in data:
        tree.append_entry(item)
    return tree, [merkle.leaf_hash(d) for d in data]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.data())
def test_roots_and_inclusion_paths_match_an_independent_implementation(n: int, data: st.DataObject
                                                                        ) -> None:
    tree, leaves = _trees(n)
    compact = merkle.CompactRange()
    for leaf in leaves:
        compact.append(leaf)
    assert compact.root() == tree.get_root(n) == merkle.root_of(leaves)
    index = data.draw(st.integers(0, n - 1))
    size = data.draw(st.integers(index + 1, n))
    proof = merkle.inclusion_proof(index, size, merkle.subtree_of_leaves(leaves))
    theirs = tree.prove_inclusion(index + 1, size)
    assert sorted(theirs.path) == sorted([leaves[index], *proof])
    root = tree.get_root(size)
    assert merkle.verify_inclusion(index, size, leaves[index], proof, root)
    assert not merkle.verify_inclusion(index, size, merkle.leaf_hash(b"other"), proof, root)
    if proof:
        bent = [bytes(32), *proof[1:]]
        assert not merkle.verify_inclusion(index, size, leaves[index], bent, root)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.data())
def test_consistency_proofs_prove_the_independent_roots(n: int, data: st.DataObject) -> None:
    tree, leaves = _trees(n)
    old = data.draw(st.integers(1, n))
    proof = merkle.consistency_proof(old, n, merkle.subtree_of_leaves(leaves))
    old_root, new_root = tree.get_root(old), tree.get_root(n)
    assert merkle.verify_consistency(old, n, old_root, new_root, proof)
    # The agent's way: only the compact range at `old` and the leaves after it.
    base = merkle.CompactRange()
    for leaf in leaves[:old]:
        base.append(leaf)
    assert proof == merkle.consistency_proof(old, n, merkle.subtree_after(base, leaves[old:]))
    if old < n:  # a forked history does not verify
        forked = [*leaves[: old - 1], merkle.leaf_hash(b"rewritten"), *leaves[old:]]
        assert not merkle.verify_consistency(old, n, merkle.root_of(forked[:old]), new_root, proof)
        assert not merkle.verify_consistency(old, n, old_root, merkle.root_of(forked), proof)


def test_compact_range_round_trips_and_refuses_a_wrong_shape() -> None:
    _, leaves = _trees(11)
    compact = merkle.CompactRange()
    for leaf in leaves:
        compact.append(leaf)
    again = merkle.CompactRange.from_hex(11, compact.to_hex())
    assert again.root() == compact.root()
    assert compact.spans() == [(0, 8), (8, 10), (10, 11)]
    with pytest.raises(ValueError, match="3 hashes"):
        merkle.CompactRange.from_hex(11, compact.to_hex()[:2])


def test_checkpoint_note_signs_parses_and_is_cosigned() -> None:
    log_key, witness_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    checkpoint = note.Checkpoint(note.origin_of("0f" * 16), 42, bytes(range(32)))
    signed = note.sign_checkpoint(checkpoint, log_key)
    parsed = note.parse(signed.text())
    assert parsed == signed
    assert parsed.text().startswith(f"vllm-audit/{'0f' * 16}\n42\n")
    assert note.log_signature_valid(parsed, log_key.public_key())
    assert not note.log_signature_valid(parsed, witness_key.public_key())
    cosigned = parsed.with_signature(*note.cosign(checkpoint, "witness.example", witness_key, 1700))
    again = note.parse(cosigned.text())
    assert note.cosignature_time(again, "witness.example", witness_key.public_key()) == 1700
    assert note.cosignature_time(again, "witness.example", log_key.public_key()) is None
    other = note.Checkpoint(checkpoint.origin, 43, checkpoint.root)
    moved = note.SignedNote(other, again.signatures)
    assert not note.log_signature_valid(moved, log_key.public_key())
    assert note.cosignature_time(moved, "witness.example", witness_key.public_key()) is None


@pytest.mark.parametrize(("text", "message"), [
    ("origin\n1\nAAAA\n", "no empty line"),
    ("origin\nx\n" + "A" * 44 + "\n\n\u2014 k abc\n", "not a decimal"),
    ("origin\n1\nAAAA\n\n\u2014 k abc\n", "not 32"),
    ("origin\n1\n" + "A" * 43 + "=\n\nnot a signature\n", "not a signature line"),
    ("origin\n1\n" + "A" * 43 + "=\n\n", "no signature"),
])
def test_a_malformed_note_is_refused_with_its_reason(text: str, message: str) -> None:
    with warnings.catch_warnings(), pytest.raises(ValueError, match=message):
        note.parse(text)
