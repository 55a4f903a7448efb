"""The C2SP tlog-witness protocol's wire format (https://c2sp.org/tlog-witness), one definition
for both sides: the witness (`vllm-audit witness`, witness/) and the agent's client
(delivery/cosigning.py).

    POST /add-checkpoint     old <size>\\n  <base64 proof hash>\\n ...  \\n  <signed-note checkpoint>

A witness answers 200 with its cosignature line(s), or refuses:

    400 malformed body, or `old` above the checkpoint's size
    403 no signature from a trusted log key (unknown_key), or a trusted key's that fails
        (bad_signature)
    404 an origin the witness does not serve
    409 `old` is not the size it last cosigned for the origin (body: that size, content type
        text/x.tlog.size); also the same size with another root (a fork) and a smaller size
        (a rollback)
    422 the consistency proof does not verify (bad_proof), or it proves the new tree holds
        another history than the one cosigned (fork)

The spec's status codes say what the client must do; the reason of the refusal (the closed set
REFUSAL_REASONS, which both sides count by) travels in the REFUSAL_HEADER header, so a client
counts a fork as a fork and not as a stale size.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

ADD_CHECKPOINT_PATH = "/add-checkpoint"
#: GET CHECKPOINT_PATH + origin: the newest checkpoint the witness cosigned for that log.
CHECKPOINT_PATH = "/checkpoint/"
SIZE_CONTENT_TYPE = "text/x.tlog.size"
REFUSAL_HEADER = "Vllm-Audit-Refusal"
#: The spec's bound: a proof over a tree of up to 2^64 leaves has at most 63 hashes.
MAX_PROOF_LINES = 63
#: A request is an old size, 63 hashes and a note with a few signatures: far below this.
MAX_BODY_BYTES = 16 << 10
HASH_BYTES = 32

#: Why a witness refused a checkpoint (closed set; counted at 0 from the start on both sides).
REFUSAL_REASONS = ("bad_signature", "unknown_key", "old_size_mismatch", "bad_proof", "fork",
                   "rollback", "malformed")
#: The refusals that mean the log showed two histories: alerts page on these.
HISTORY_REFUSALS = ("fork", "rollback")


@dataclass(frozen=True)
class AddCheckpoint:
    old_size: int
    proof: tuple[bytes, ...]
    #: The signed note, as sent (parsed by note.parse).
    note_text: str


def encode_request(old_size: int, proof: Sequence[bytes], note_text: str) -> bytes:
    lines = [f"old {old_size}\n", *(base64.b64encode(h).decode() + "\n" for h in proof), "\n"]
    return ("".join(lines) + note_text).encode()


def _decimal(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or (text.startswith("0") and text != "0"):
        raise ValueError(f"{what} {text[:40]!r} is not a decimal number without leading zeros")
    return int(text)


def parse_request(body: bytes) -> AddCheckpoint:
    """An add-checkpoint body; ValueError naming what is wrong with it."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8") from None
    head, sep, note_text = text.partition("\n\n")
    if not sep:
        raise ValueError("no empty line between the old size and proof lines and the checkpoint")
    lines = head.split("\n")
    first = lines[0]
    if not first.startswith("old "):
        raise ValueError(f"the first line is {first[:40]!r}, not 'old <size>'")
    old_size = _decimal(first[4:], "the old size")
    proof_lines = lines[1:]
    if len(proof_lines) > MAX_PROOF_LINES:
        raise ValueError(f"{len(proof_lines)} consistency proof lines; at most {MAX_PROOF_LINES}")
    proof = []
    for n, line in enumerate(proof_lines, 1):
        try:
            digest = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"consistency proof line {n} is not base64") from None
        if len(digest) != HASH_BYTES:
            raise ValueError(f"consistency proof line {n} holds {len(digest)} bytes, not "
                             f"{HASH_BYTES}")
        proof.append(digest)
    if old_size == 0 and proof:
        raise ValueError("a proof from size 0 must be empty")
    if not note_text.endswith("\n"):
        raise ValueError("the checkpoint's last line does not end with a newline")
    return AddCheckpoint(old_size, tuple(proof), note_text)


def encode_size(size: int) -> str:
    return f"{size}\n"


def parse_size(text: str) -> int:
    """A 409's body: the size the witness last cosigned."""
    if not text.endswith("\n"):
        raise ValueError(f"a size answer ends with a newline: {text[:40]!r}")
    return _decimal(text[:-1], "the witness's size")
