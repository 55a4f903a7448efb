"""`vllm-audit witness` as a real process on a real port, fed checkpoints of real Merkle trees
(records/merkle.py) signed as C2SP notes (records/note.py): it cosigns a log that grows and
refuses, with the spec's status and a named reason, a fork, a rollback, a stale old size and
malformed input (never a 5xx); what it cosigned survives a SIGKILL."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prometheus_client.parser import text_string_to_metric_families

from harness.procs import Proc, start_witness
from vllm_audit_agent.cli.main import main
from vllm_audit_agent.records import merkle, note
from vllm_audit_agent.records.chain import load_public_key, public_pem
from vllm_audit_agent.records.witness_protocol import (
    REFUSAL_HEADER,
    REFUSAL_REASONS,
    SIZE_CONTENT_TYPE,
    encode_request,
)

NAME = "witness.test/w1"
ORIGIN = note.origin_of("0123456789abcdef")


@dataclass
class Answer:
    status: int
    text: str
    content_type: str
    reason: str


def call(url: str, body: bytes | None = None, method: str | None = None) -> Answer:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(response.status, response.read().decode(), response.headers.get(
                "Content-Type", ""), response.headers.get(REFUSAL_HEADER, ""))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read().decode(errors="replace"),
                      exc.headers.get("Content-Type", ""), exc.headers.get(REFUSAL_HEADER, ""))


class Log:
    """A log's leaves and key: signed checkpoints and consistency proofs at any size."""

    def __init__(self, key: Ed25519PrivateKey, prefix: bytes = b"record", origin: str = ORIGIN
                 ) -> None:
        self.key, self.prefix, self.origin = key, prefix, origin
        self.leaves: list[bytes] = []

    def grow(self, n: int) -> Log:
        start = len(self.leaves)
        self.leaves += [merkle.leaf_hash(b"%s %d" % (self.prefix, i)) for i in range(start, start + n)]
        return self

    def checkpoint(self, size: int | None = None) -> note.SignedNote:
        size = len(self.leaves) if size is None else size
        root = merkle.root_of(self.leaves[:size])
        return note.sign_checkpoint(note.Checkpoint(self.origin, size, root), self.key)

    def proof(self, old: int, new: int | None = None) -> list[bytes]:
        new = len(self.leaves) if new is None else new
        return merkle.consistency_proof(old, new, merkle.subtree_of_leaves(self.leaves[:new]))

    def body(self, old: int, size: int | None = None, proof: list[bytes] | None = None) -> bytes:
        size = len(self.leaves) if size is None else size
        proof = self.proof(old, size) if proof is None else proof
        return encode_request(old, proof, self.checkpoint(size).text())


@dataclass
class Witness:
    proc: Proc
    base: str
    tmp: Path
    key_path: Path
    log_pub: Path
    state_dir: Path
    log_key: Ed25519PrivateKey

    def add(self, body: bytes) -> Answer:
        return call(self.base + "/add-checkpoint", body)

    def public_key(self) -> Ed25519PublicKey:
        return load_public_key(self.state_dir / "witness.pub")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = call(self.base + "/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    def refused(self, reason: str) -> float:
        return self.metrics()[("vllm_audit_witness_server_refused_checkpoints_total",
                               (("reason", reason),))]

    def restart(self, kill: bool = True) -> None:
        if kill:
            self.proc.kill()
        else:
            self.proc.stop()
        port = int(self.base.rsplit(":", 1)[1])
        self.proc, self.base = start_witness(self.tmp, self.key_path, [self.log_pub],
                                             self.state_dir, NAME, port)


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[Witness]:
    log_key = Ed25519PrivateKey.generate()
    log_pub = tmp_path / "log.pub"
    log_pub.write_bytes(public_pem(log_key.public_key()))
    key_path, state_dir = tmp_path / "witness.key", tmp_path / "witness-state"
    proc, base = start_witness(tmp_path, key_path, [log_pub], state_dir, NAME)
    w = Witness(proc, base, tmp_path, key_path, log_pub, state_dir, log_key)
    try:
        yield w
    finally:
        w.proc.stop()


def cosigned_at(w: Witness, answer: Answer, signed: note.SignedNote) -> int | None:
    """The witness's valid cosignature time on `signed`, from the 200's signature line(s)."""
    assert answer.status == 200, answer
    assert answer.text.startswith("\u2014 ") and answer.text.endswith("\n")
    return note.cosignature_time(note.parse(signed.text() + answer.text), NAME, w.public_key())


def test_cosigns_a_growing_log_and_serves_the_newest_checkpoint(witness: Witness) -> None:
    log = Log(witness.log_key)
    assert all(witness.refused(r) == 0 for r in REFUSAL_REASONS)  # born at 0
    old = 0
    for n in (3, 2, 3, 9, 0, 1):  # 3, 5 (a power of two next), 8, 17, 17 again, 18
        log.grow(n)
        answer = witness.add(log.body(old))
        assert cosigned_at(witness, answer, log.checkpoint()) is not None, answer
        old = len(log.leaves)
    served = call(f"{witness.base}/checkpoint/{ORIGIN}")
    assert served.status == 200
    newest = note.parse(served.text)
    assert newest.checkpoint == log.checkpoint().checkpoint
    assert note.log_signature_valid(newest, witness.log_key.public_key())
    assert note.cosignature_time(newest, NAME, witness.public_key()) is not None
    metrics = witness.metrics()
    assert metrics[("vllm_audit_witness_server_cosigned_checkpoints_total", ())] == 6
    assert metrics[("vllm_audit_witness_server_log_size", (("origin", ORIGIN),))] == 18
    assert all(witness.refused(r) == 0 for r in REFUSAL_REASONS)
    assert call(f"{witness.base}/checkpoint/vllm-audit/other").status == 404


def test_refuses_a_fork_at_the_same_size(witness: Witness) -> None:
    log = Log(witness.log_key).grow(5)
    assert witness.add(log.body(0)).status == 200
    forged = Log(witness.log_key, b"forged").grow(5)
    answer = witness.add(forged.body(5))
    assert (answer.status, answer.text, answer.reason) == (409, "5\n", "fork")
    assert answer.content_type.startswith(SIZE_CONTENT_TYPE)
    assert witness.refused("fork") == 1
    # It still holds the history it cosigned.
    assert note.parse(call(f"{witness.base}/checkpoint/{ORIGIN}").text).checkpoint.root == \
        log.checkpoint().checkpoint.root


@pytest.mark.parametrize("cosigned", [5, 4], ids=["old-size-5", "old-size-power-of-two"])
def test_refuses_a_fork_at_a_larger_size(witness: Witness, cosigned: int) -> None:
    log = Log(witness.log_key).grow(cosigned)
    assert witness.add(log.body(0)).status == 200
    # The same key signs a rewritten history (its first record changed) at a larger size, with
    # the consistency proof of that rewritten tree: it does not verify against what was cosigned.
    forged = Log(witness.log_key)
    forged.leaves = [merkle.leaf_hash(b"rewritten 0"), *log.leaves[1:]]
    forged.grow(6)
    answer = witness.add(forged.body(cosigned))
    assert answer.status == 422
    # From 5 the proof rebuilds the forged root from another old tree: a fork. From a power of
    # two the proof starts from the witness's own root, so it is only a proof that fails.
    expected = "fork" if cosigned == 5 else "bad_proof"
    assert answer.reason == expected and answer.text.startswith(expected + ":")
    assert witness.refused(expected) == 1
    # A proof that is merely wrong (right length, one hash changed) is a bad proof, not a fork.
    log.grow(6)
    proof = log.proof(cosigned)
    proof[-1] = bytes(32)
    answer = witness.add(log.body(cosigned, proof=proof))
    assert (answer.status, answer.reason) == (422, "bad_proof")
    # The genuine continuation is still cosigned.
    assert witness.add(log.body(cosigned)).status == 200


def test_refuses_a_rollback(witness: Witness) -> None:
    log = Log(witness.log_key).grow(8)
    assert witness.add(log.body(0)).status == 200
    answer = witness.add(log.body(5, size=5))  # a log cut back to an earlier checkpoint
    assert (answer.status, answer.text, answer.reason) == (409, "8\n", "rollback")
    answer = witness.add(encode_request(8, [], log.checkpoint(5).text()))  # old above its size
    assert (answer.status, answer.reason) == (400, "rollback")
    assert witness.refused("rollback") == 2
    assert witness.refused("fork") == 0


def test_a_stale_old_size_gets_409_with_the_size_it_cosigned(witness: Witness) -> None:
    log = Log(witness.log_key).grow(4)
    assert witness.add(log.body(0)).status == 200
    log.grow(3)
    answer = witness.add(log.body(0))  # a client that does not know: asks from 0 (the spec)
    assert (answer.status, answer.text, answer.reason) == (409, "4\n", "old_size_mismatch")
    assert answer.content_type.startswith(SIZE_CONTENT_TYPE)
    answer = witness.add(log.body(2))
    assert (answer.status, answer.text) == (409, "4\n")
    assert witness.add(log.body(4)).status == 200  # retried from the size it reported


def test_what_it_cosigned_survives_a_sigkill(witness: Witness) -> None:
    log = Log(witness.log_key).grow(8)
    assert witness.add(log.body(0)).status == 200
    witness.restart(kill=True)
    assert call(f"{witness.base}/checkpoint/{ORIGIN}").status == 200
    answer = witness.add(log.body(5, size=5))
    assert (answer.status, answer.text, answer.reason) == (409, "8\n", "rollback")
    forged = Log(witness.log_key, b"forged").grow(8)
    assert witness.add(forged.body(8)).reason == "fork"
    log.grow(2)
    assert witness.add(log.body(0)).text == "8\n"
    assert cosigned_at(witness, witness.add(log.body(8)), log.checkpoint()) is not None
    state = next((witness.state_dir / "logs").glob("*.json"))
    assert state.stat().st_mode & 0o777 == 0o600
    witness.restart(kill=False)
    assert note.parse(call(f"{witness.base}/checkpoint/{ORIGIN}").text).checkpoint.size == 10


def _malformed(log: Log, other_key: Ed25519PrivateKey) -> dict[str, tuple[bytes, int, str]]:
    """name -> (body, status, reason)."""
    good = log.checkpoint().text()
    h = base64.b64encode(bytes(32)).decode()
    tampered = note.parse(good)
    name, value = tampered.signatures[0]
    raw = bytearray(base64.b64decode(value))
    raw[-1] ^= 1
    bad_sig = note.SignedNote(tampered.checkpoint, ((name, base64.b64encode(raw).decode()),))
    foreign = note.sign_checkpoint(note.Checkpoint("example.com/log", 3, bytes(32)), log.key)
    return {
        "empty": (b"", 400, "malformed"),
        "no empty line": (b"old 0\n" + good.replace("\n\n", "\n").encode(), 400, "malformed"),
        "not old": (b"new 0\n\n" + good.encode(), 400, "malformed"),
        "old not a number": (b"old x\n\n" + good.encode(), 400, "malformed"),
        "leading zero": (b"old 01\n\n" + good.encode(), 400, "malformed"),
        "proof not base64": (f"old 1\n!!\n\n{good}".encode(), 400, "malformed"),
        "proof hash short": (f"old 1\nAAAA\n\n{good}".encode(), 400, "malformed"),
        "64 proof lines": (("old 1\n" + f"{h}\n" * 64 + "\n" + good).encode(), 400, "malformed"),
        "proof from 0": (f"old 0\n{h}\n\n{good}".encode(), 400, "malformed"),
        "not utf-8": (b"old 0\n\n\xff\xfe", 400, "malformed"),
        "no signature": (b"old 0\n\n" + log.checkpoint().checkpoint.body().encode() + b"\n",
                         400, "malformed"),
        "size not a number": (b"old 0\n\n" + good.replace("\n3\n", "\nthree\n", 1).encode(),
                              400, "malformed"),
        "no final newline": (b"old 0\n\n" + good.encode()[:-1], 400, "malformed"),
        "old above size": (encode_request(4, [bytes(32)], good), 400, "malformed"),
        "origin not served": (encode_request(0, [], foreign.text()), 404, "unknown_key"),
        "unknown log key": (encode_request(0, [], note.sign_checkpoint(
            log.checkpoint().checkpoint, other_key).text()), 403, "unknown_key"),
        "bad signature": (encode_request(0, [], bad_sig.text()), 403, "bad_signature"),
        "too large": (b"old 0\n" + b"A" * (17 << 10), 413, "malformed"),
    }


def test_malformed_input_gets_a_4xx_naming_the_problem_never_a_5xx(witness: Witness) -> None:
    log = Log(witness.log_key).grow(3)
    cases = _malformed(log, Ed25519PrivateKey.generate())
    for name, (body, status, reason) in cases.items():
        answer = witness.add(body)
        assert (answer.status, answer.reason) == (status, reason), (name, answer)
        if status != 413:
            assert answer.text.startswith(f"{reason}: ") and len(answer.text) > len(reason) + 10, \
                (name, answer)
    assert call(witness.base + "/add-checkpoint", method="GET").status == 405
    assert call(witness.base + "/nothing").status == 404
    counted = {r: witness.refused(r) for r in REFUSAL_REASONS}
    assert counted == {**dict.fromkeys(REFUSAL_REASONS, 0), "malformed": 15, "unknown_key": 2,
                       "bad_signature": 1}
    metrics = witness.metrics()
    assert metrics[("vllm_audit_witness_server_internal_errors_total", ())] == 0
    # Nothing of that reached its state: the log's first checkpoint is still its first sight.
    assert cosigned_at(witness, witness.add(log.body(0)), log.checkpoint()) is not None
    # Each refusal was logged, a flood of one reason once.
    witness.proc.stop()
    logged = witness.proc.log_path.read_text()
    assert logged.count("refused a checkpoint") < len(cases)
    assert "bad_signature" in logged and "unknown_key" in logged


def test_the_command_line_refuses_what_it_cannot_run(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "w.key"
    assert main(["witness", "--key", str(key), "--create-key", "--print-public-key",
                 "--name", NAME]) == 0
    printed = capsys.readouterr().out
    assert f"{NAME}+" in printed and "BEGIN PUBLIC KEY" in printed
    assert key.stat().st_mode & 0o777 == 0o600
    assert main(["witness", "--key", str(key), "--state-dir", str(tmp_path / "s")]) == 2
    assert "--log-public-key" in capsys.readouterr().err
    assert main(["witness", "--key", str(key), "--state-dir", str(tmp_path / "s"),
                 "--log-public-key", str(tmp_path / "missing.pub")]) == 1
    assert "missing.pub" in capsys.readouterr().err
    assert main(["witness", "--key", str(key), "--name", "has space", "--print-public-key"]) == 2
    assert "has space" in capsys.readouterr().err


def test_a_second_witness_on_one_state_dir_is_refused(witness: Witness,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["witness", "--key", str(witness.key_path), "--state-dir", str(witness.state_dir),
                 "--listen", "127.0.0.1:0", "--log-public-key", str(witness.log_pub)])
    assert code == 1
    assert str(witness.state_dir) in capsys.readouterr().err
    assert call(witness.base + "/healthz").status == 200
