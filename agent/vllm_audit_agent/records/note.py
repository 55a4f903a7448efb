"""Checkpoints as C2SP signed notes, and witness cosignatures (C2SP tlog-checkpoint,
signed-note and tlog-cosignature), so that tools made for transparency logs can read them.

A checkpoint's body is three lines — the log's origin, its tree size, the base64 Merkle root —
each ending in a newline. A signed note is that body, an empty line, and one line per
signature: `— <key name> <base64(4-byte key hash || signature)>`.

    log signature    Ed25519 over the body;       key hash = SHA-256(name || 0x0A || 0x01 || key)[:4]
    cosignature/v1   Ed25519 over "cosignature/v1\\ntime <t>\\n" || body;
                     key hash = SHA-256(name || 0x0A || 0x04 || key)[:4];
                     the line carries key hash || t (8 bytes, big-endian) || signature

The origin of a record log is `vllm-audit/<log_id>`; the log key's name is its origin.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vllm_audit_agent.records.chain import raw_public_key

ORIGIN_PREFIX = "vllm-audit/"
SIGNATURE_DASH = "\u2014 "
#: The signed-note key types: an Ed25519 log key, a cosignature/v1 witness key.
ED25519 = b"\x01"
COSIGNATURE_V1 = b"\x04"


def origin_of(log_id: str) -> str:
    return f"{ORIGIN_PREFIX}{log_id}"


def key_hash(name: str, kind: bytes, public_key: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + kind + raw_public_key(public_key)).digest()[:4]


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


@dataclass(frozen=True)
class SignedNote:
    checkpoint: Checkpoint
    #: (key name, base64 of key hash || signature bytes), in order.
    signatures: tuple[tuple[str, str], ...]

    def text(self) -> str:
        lines = "".join(f"{SIGNATURE_DASH}{name} {value}\n" for name, value in self.signatures)
        return f"{self.checkpoint.body()}\n{lines}"

    def with_signature(self, name: str, value: str) -> SignedNote:
        return SignedNote(self.checkpoint, (*self.signatures, (name, value)))


def parse(text: str) -> SignedNote:
    """A signed note's checkpoint and signature lines; ValueError naming what is wrong."""
    body, sep, rest = text.partition("\n\n")
    if not sep:
        raise ValueError("not a signed note: no empty line between the text and its signatures")
    lines = body.split("\n")
    if len(lines) < 3:
        raise ValueError("a checkpoint has an origin, a tree size and a root hash")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not size_text.isdigit() or (size_text.startswith("0") and size_text != "0"):
        raise ValueError(f"the tree size {size_text!r} is not a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except ValueError:
        raise ValueError(f"the root hash {root_text!r} is not base64") from None
    if len(root) != 32:
        raise ValueError(f"the root hash has {len(root)} bytes, not 32")
    signatures = []
    for line in rest.split("\n"):
        if not line:
            continue
        if not line.startswith(SIGNATURE_DASH):
            raise ValueError(f"not a signature line: {line[:60]!r}")
        name, _, value = line[len(SIGNATURE_DASH):].rpartition(" ")
        if not name or not value:
            raise ValueError(f"a signature line without a key name or a signature: {line[:60]!r}")
        signatures.append((name, value))
    if not signatures:
        raise ValueError("the note has no signature")
    return SignedNote(Checkpoint(origin, int(size_text), root), tuple(signatures))


# -- the log's signature ----------------------------------------------------------------------
def sign_checkpoint(checkpoint: Checkpoint, private_key: Ed25519PrivateKey) -> SignedNote:
    public = private_key.public_key()
    name = checkpoint.origin
    signature = private_key.sign(checkpoint.body().encode())
    value = base64.b64encode(key_hash(name, ED25519, public) + signature).decode()
    return SignedNote(checkpoint, ((name, value),))


def _decoded(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return b""


def log_signature_valid(note: SignedNote, public_key: Ed25519PublicKey) -> bool:
    """Whether the note carries the log key's signature (key name = the origin)."""
    name = note.checkpoint.origin
    want = key_hash(name, ED25519, public_key)
    for signer, value in note.signatures:
        raw = _decoded(value)
        if signer == name and raw[:4] == want and len(raw) == 68:
            try:
                public_key.verify(raw[4:], note.checkpoint.body().encode())
                return True
            except InvalidSignature:
                return False
    return False


# -- witness cosignatures -------------------------------------------------------------------------
def _cosigned_message(checkpoint: Checkpoint, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{checkpoint.body()}".encode()


def cosign(checkpoint: Checkpoint, name: str, private_key: Ed25519PrivateKey,
           timestamp: int) -> tuple[str, str]:
    """A witness's signature line (name, value) over the checkpoint at `timestamp` (seconds)."""
    signature = private_key.sign(_cosigned_message(checkpoint, timestamp))
    raw = key_hash(name, COSIGNATURE_V1, private_key.public_key()) + \
        struct.pack(">Q", timestamp) + signature
    return name, base64.b64encode(raw).decode()


def cosignature_time(note: SignedNote, name: str, public_key: Ed25519PublicKey) -> int | None:
    """The time of the witness `name`'s valid cosignature on the note, or None."""
    want = key_hash(name, COSIGNATURE_V1, public_key)
    for signer, value in note.signatures:
        raw = _decoded(value)
        if signer != name or raw[:4] != want or len(raw) != 76:
            continue
        timestamp = struct.unpack(">Q", raw[4:12])[0]
        try:
            public_key.verify(raw[12:], _cosigned_message(note.checkpoint, timestamp))
        except InvalidSignature:
            continue
        return int(timestamp)
    return None
