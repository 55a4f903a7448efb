"""The consumer parses each record once (fleet/pipeline.py): the verifier's parse routes it,
gives verify_chain its chain fields (records/fields.py `parsed_fields`: a claim, checked as
one read from the bytes is) and fills the store's columns (rows.Rows). The columns must be
what `rows.columns` makes of the records the verifier keeps, a claim must be the record's own
and can never hide a changed byte, and a batch is parsed once — on a real record log, a real
verifier and a real chDB store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.agent.test_chain_fields import RECORDS, chain
from tests.fleet.test_rows import EDGES, NOW
from tests.fleet.test_verifier import written_log
from vllm_audit_agent.fleet.pipeline import WritePath
from vllm_audit_agent.fleet.rows import Rows, columns
from vllm_audit_agent.fleet.store import FleetStore
from vllm_audit_agent.fleet.verifier import FleetVerifier
from vllm_audit_agent.records.chain import Signer, seal
from vllm_audit_agent.records.fields import chain_fields, parsed_fields
from vllm_audit_agent.records.verify import verify_chain


# -- the claim from the parse ----------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(st.lists(RECORDS, min_size=1, max_size=4))
def test_a_claim_from_the_parse_is_the_records_own_and_verifies_alike(
        records: list[dict[str, Any]]) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    lines = chain(records, signer)
    claims = [parsed_fields(orjson.loads(line), line) for line in lines]
    for line, claim in zip(lines[:-1], claims, strict=False):
        record = orjson.loads(line)
        assert claim is not None  # a request record of the log's own form: never parsed again
        assert claim == chain_fields(line) or chain_fields(line) is None  # a lookalike: exact
        assert (claim.seq, claim.hash, claim.prev_hash, claim.log_id, claim.type) == (
            record["seq"], record["hash"], record["prev_hash"], record.get("log_id"),
            record["type"])
        assert line[claim.hash_at:].startswith(b'"hash":"' + record["hash"].encode() + b'"')
    assert claims[-1] is None  # a checkpoint: always parsed, its signature checked
    given_claims = verify_chain(lines, signer.public_key, fields=claims)
    read = verify_chain(lines, signer.public_key)
    assert given_claims.intact and given_claims.to_dict() == read.to_dict()


def test_a_nested_copy_of_the_hash_member_or_an_odd_field_sends_it_to_the_exact_path() -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    nested = seal({"type": "request", "log_id": "ab" * 16, "steps": {"hash": "f" * 64}}, 1,
                  "0" * 64)
    parsed = orjson.loads(nested)
    assert parsed_fields(parsed, nested) is not None  # another value: the member is unique
    # the record's own hash member, copied into a nested object: which one is cut is unclear
    twice = nested.replace(b"f" * 64, parsed["hash"].encode())
    assert parsed_fields(orjson.loads(twice), twice) is None
    report = verify_chain([twice], signer.public_key, fields=[None])
    assert report.broken is not None and report.broken.reason == "hash_mismatch"
    for odd in ({"seq": True}, {"seq": 1.0}, {"hash": 5}, {"prev_hash": "0"}, {"log_id": 3},
                {"type": "checkpoint"}, {"type": "seal"}, {"type": None}):
        assert parsed_fields(dict(parsed, **odd), nested) is None, odd
    assert parsed_fields([parsed], nested) is None


def test_a_claim_never_hides_a_changed_byte() -> None:
    """verify_chain checks a claim as it checks fields read from the bytes: a claim made from
    the original record, handed with altered bytes, still breaks the chain where they differ."""
    signer = Signer(Ed25519PrivateKey.generate())
    lines = chain([{"user": "alice"}, {"user": "bob"}, {"user": "carol"}], signer)
    claims = [parsed_fields(orjson.loads(line), line) for line in lines]
    altered = list(lines)
    altered[1] = lines[1].replace(b'"bob"', b'"eve"')
    report = verify_chain(altered, signer.public_key, fields=claims)
    assert report.broken is not None
    assert (report.broken.seq, report.broken.reason) == (2, "hash_mismatch")
    # a claim naming another seq or link: the exact path names the break from the record
    wrong = [claims[0], claims[1]._replace(seq=7), claims[2], None]
    report = verify_chain(lines, signer.public_key, fields=wrong)
    assert report.intact, report  # the record is right; the lying claim is not believed
    with pytest.raises(ValueError):
        verify_chain(lines, signer.public_key, fields=claims[:2])


# -- the columns from the verifier's parse ---------------------------------------------------
def test_the_columns_from_the_verifiers_parse_are_columns_of_what_it_keeps(
        tmp_path: Path, store: FleetStore) -> None:
    key = Ed25519PrivateKey.generate()
    payloads = written_log(tmp_path / "log", key, 30)
    verifier = FleetVerifier(store, [key.public_key()])
    # a log in order, re-delivered in part, a conflicting copy, records of no log or of an
    # unknown one with every edge value the column contract names, unreadable bytes
    other = orjson.loads(payloads[24])  # comes first, waits for the seqs before it
    other["user"] = "mallory"
    del other["hash"]
    batches = [payloads[:12] + EDGES,
               [*payloads[10:20], seal(other, other["seq"], other["prev_hash"])],
               [*payloads[20:], *payloads[:3], b"", b"[1]"]]
    for batch in batches:
        built = Rows(NOW)
        fed = verifier.feed(batch, built.add)
        assert built.table().equals(columns(fed.store, NOW))
    assert not set(payloads[:3]) & set(fed.store)  # replays of verified records: not kept
    (log,) = [log for log in verifier.logs.values() if log.log_id == other["log_id"]]
    assert (log.status, log.reason, log.break_seq) == ("broken", "conflicting_duplicate",
                                                   other["seq"])


def test_a_batch_is_parsed_once(tmp_path: Path, store: FleetStore,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    key = Ed25519PrivateKey.generate()
    payloads = written_log(tmp_path / "log", key, 40)
    path = WritePath(store, FleetVerifier(store, [key.public_key()]))
    parses: list[bytes] = []
    loads = orjson.loads

    def counted(data: Any) -> Any:
        parses.append(data)
        return loads(data)

    monkeypatch.setattr(orjson, "loads", counted)
    batch = path.prepare(payloads, {})
    monkeypatch.undo()
    # each request record once (the genesis and checkpoints, signed, are parsed again where
    # their signatures are checked)
    requests = [p for p in payloads if b'"type":"request"' in p]
    assert len(requests) == 40
    assert sorted(p for p in parses if b'"type":"request"' in p) == sorted(requests)
    assert batch.rows is not None and batch.rows.equals(columns(payloads, NOW))
    path.write(batch)
    (saved,) = store.logs()
    assert (saved["status"], saved["head_seq"]) == ("verified", len(payloads))
    assert store.count() == len(payloads)
