"""verify and export read a plain record's chain fields from its bytes (records/fields.py)
instead of parsing it: what they find must be what the parsed record says, a record they
cannot read that way is parsed, and a changed byte is caught either way."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_audit_agent.records.chain import GENESIS_HASH, Signer, seal
from vllm_audit_agent.records.export import _export_jsonl
from vllm_audit_agent.records.fields import chain_fields, time_and_type
from vllm_audit_agent.records.verify import verify_chain

#: Keys of nested values that look like the chain's own: a byte search must not be fooled.
LOOKALIKES = st.sampled_from(["seq", "hash", "prev_hash", "type", "log_id", "recorded_unix_ms",
                              "x", "checkpoint", "zz"])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40)
    | st.sampled_from(["checkpoint", "request", '"seq":1', '"type":"seal"', "\\", "0" * 64])
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(LOOKALIKES, inner, max_size=3),
    max_leaves=8)
RECORDS = st.dictionaries(st.sampled_from(["content", "a", "zz", "user", "steps"]), VALUES,
                          max_size=4)


def chain(records: list[dict[str, Any]], signer: Signer, log_id: str | None = "ab" * 16
          ) -> list[bytes]:
    """`records` as request records of one chain (one a millisecond), then a checkpoint."""
    lines: list[bytes] = []
    prev = GENESIS_HASH
    for i, fields in enumerate(records):
        record = {**fields, "type": "request", "recorded_unix_ms": 1000 + i}
        if log_id is not None:
            record["log_id"] = log_id
        lines.append(seal(record, i + 1, prev))
        prev = record["hash"]
    checkpoint: dict[str, Any] = {"type": "checkpoint", "head_seq": len(records),
                                  "head_hash": prev, "count": len(records), "time_unix_ms": 0,
                                  "recorded_unix_ms": 1000 + len(records)}
    if log_id is not None:
        checkpoint["log_id"] = log_id
    signer.sign(checkpoint)
    lines.append(seal(checkpoint, len(records) + 1, prev))
    return lines


def test_fields_read_from_the_bytes_are_the_parsed_ones() -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    for log_id in ("ab" * 16, None):
        lines = chain([{"user": "alice", "latency_ms": 1.5}] * 3, signer, log_id)
        for line in lines[:-1]:
            record = orjson.loads(line)
            found = chain_fields(line)
            assert found is not None
            assert (found.seq, found.hash, found.prev_hash, found.log_id, found.type) == (
                record["seq"], record["hash"], record["prev_hash"], record.get("log_id"),
                record["type"])
            assert time_and_type(line) == (record["recorded_unix_ms"], "request")
        assert chain_fields(lines[-1]) is None  # a checkpoint is always parsed


def test_a_nested_lookalike_key_is_never_read_as_the_records_own() -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    # "steps" sorts between "seq" and "type": its nested "seq" is the last one before "type".
    for nested in ({"seq": 7}, {"type": "request"}, {"prev_hash": "0" * 64}, {"log_id": "x"},
                   {"hash": "0" * 64}):
        lines = chain([{"steps": nested}, {"user": "bob"}], signer)
        assert chain_fields(lines[0]) is None, nested  # the exact path takes it
        assert chain_fields(lines[1]) is not None
        report = verify_chain(lines, signer.public_key)
        assert report.intact and report.records == 3, (nested, report)


@settings(max_examples=200, deadline=None)
@given(st.lists(RECORDS, min_size=1, max_size=4), st.data())
def test_lookalike_keys_neither_break_a_chain_nor_hide_a_changed_byte(
        records: list[dict[str, Any]], data: st.DataObject) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    lines = chain(records, signer)
    report = verify_chain(lines, signer.public_key)
    assert report.intact, report
    assert report.records == len(lines) and report.checkpoints == 1
    # Any byte of any record changed (to one that keeps it text): a break, never intact.
    i = data.draw(st.integers(0, len(lines) - 1))
    at = data.draw(st.integers(0, len(lines[i]) - 1))
    new = data.draw(st.sampled_from(b'0af{}":,1x\\').filter(lambda b: b != lines[i][at]))
    changed = list(lines)
    changed[i] = lines[i][:at] + bytes([new]) + lines[i][at + 1:]
    assert not verify_chain(changed, signer.public_key).intact


@settings(max_examples=100, deadline=None)
@given(st.lists(RECORDS, min_size=2, max_size=6), st.integers(1000, 1006),
       st.integers(1000, 1008))
def test_an_export_range_is_the_same_read_from_bytes_as_parsed(
        records: list[dict[str, Any]], since: int, until: int) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    lines = chain(records, signer)
    out = io.StringIO()  # no binary buffer under it: written as text
    count = _export_jsonl(iter(lines), out, since, until if until > since else None)
    parsed = [orjson.loads(line) for line in lines]
    first = next((i for i, r in enumerate(parsed) if r["recorded_unix_ms"] >= since), len(lines))
    # From the range's start on to the checkpoint after it (the chain's last record).
    assert out.getvalue().encode() == b"".join(line + b"\n" for line in lines[first:])
    assert count == sum(1 for r in parsed[first:] if r["type"] == "request"
                        and (until <= since or r["recorded_unix_ms"] < until))


def test_an_export_file_gets_the_stored_bytes(tmp_path: Path) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    lines = chain([{"text": "é ✓ \\u2028"}] * 5, signer)
    path = tmp_path / "out.jsonl"
    with open(path, "w", newline="") as out:
        out.write("")  # text written before goes first (the stream is flushed)
        assert _export_jsonl(iter(lines), out, None, None) == 5
    assert path.read_bytes() == b"".join(line + b"\n" for line in lines)
