"""The record log's tamper evidence: canonical JSON, the hash chain, Ed25519 checkpoints.

Canonical form (what is stored, published, exported and hashed): `orjson.dumps(record,
OPT_SORT_KEYS)` — UTF-8, object keys sorted by code point at every level, no whitespace,
integers in decimal, strings with orjson's minimal escaping. Floats are normalised first so
that a verifier in any language gets the same bytes: an integral float becomes an integer
(3.0 -> 3), a float whose magnitude is below 1e-6 becomes 0, others are written as the
shortest decimal that round-trips (orjson/Ryu; the same digits as RFC 8785 in that range);
NaN and infinities are refused. Normalising is idempotent, so `canonical(loads(line)) == line`.

Chain: every record carries `seq` (1, 2, …, no gaps), `prev_hash` (the previous record's
`hash`; 64 zeros before the first) and

    hash = hex(SHA-256(canonical(record without the "hash" key)))

`prev_hash` is inside the hashed bytes, so each hash covers the whole chain before it.

Checkpoint: a chained record of `type` "checkpoint" naming the head it covers (`head_seq`,
`head_hash` = the record just before it, `count` = records in the chain up to the head,
`time_unix_ms`, `key_id` = first 16 hex digits of SHA-256 of the raw public key) with

    signature = base64(Ed25519-sign(canonical(checkpoint without SIGNATURE_EXCLUDES)))

and then its own `hash` as for any record (the signature is inside it). The signature covers
what the checkpoint asserts (head, count, time, key), not where it sits (`seq`, `prev_hash`,
`recorded_unix_ms`): re-chaining records after an altered one, up to and through a
checkpoint, keeps its signature valid but leaves its `head_hash` naming the original head,
which `verify` reports as a checkpoint head mismatch.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vllm_audit_agent.storage.datadir import write_private_file

logger = logging.getLogger("vllm_audit.agent")

GENESIS_HASH = "0" * 64
#: Record types in the log (the `type` field).
RECORD_TYPE_REQUEST = "request"
RECORD_TYPE_CHECKPOINT = "checkpoint"
#: Meta-audit: one record per authorised query or control call (agent/vllm_audit_agent/meta_audit.py).
RECORD_TYPE_ACCESS = "access"
#: Evidence (identity.py, retention.py, the witness client): a log's first record, what
#: retention removed, a witness's cosignature of a checkpoint.
RECORD_TYPE_GENESIS = "genesis"
RECORD_TYPE_SEAL = "seal"
RECORD_TYPE_COSIGNATURE = "cosignature"
#: The audit level in effect changed: through the control API, or found changed at a start.
RECORD_TYPE_LEVEL = "level"
#: A call to one of vLLM's administrative endpoints (model/record.py admin_record).
RECORD_TYPE_ADMIN = "admin"
#: A detection's finding (detections/finding.py): what a rule saw, about whom, on what evidence.
RECORD_TYPE_FINDING = "finding"
#: Content keys destroyed: one subject's on request, or a period's by content retention
#: (erasure.py).
RECORD_TYPE_ERASURE = "erasure"
#: What checkpoints are about: the records counted towards --checkpoint-every, and a log that
#: ends with one of these after its last checkpoint writes one more at a clean stop (verify
#: calls them an unsigned tail otherwise). Footers count them too (footers.py).
COVERED_TYPES = (RECORD_TYPE_REQUEST, RECORD_TYPE_ACCESS, RECORD_TYPE_ADMIN, RECORD_TYPE_FINDING)
#: Record types whose Ed25519 `signature` covers them (signed_bytes) besides the chain.
SIGNED_TYPES = frozenset({"checkpoint", "genesis", "seal", "erasure"})
#: What the record log adds to a record: its kind, when it entered the log, its place in the
#: chain. A trail shown by the query API has every other field of its record.
CHAIN_FIELDS = ("type", "recorded_unix_ms", "seq", "prev_hash", "hash")
#: Version of the chain and checkpoint fields (not of the request record's own schema).
CHAIN_VERSION = 1


def _float(value: float) -> float | int:
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"non-finite number {value!r} in a record")
    if value.is_integer() and -(2**53) <= value <= 2**53:  # exact as an int, and in int64
        return int(value)
    return 0 if -1e-6 < value < 1e-6 else value


def _normalise_in_place(container: dict[str, Any] | list[Any]) -> None:
    """Normalises the floats of a JSON-like tree in place (the hot path: every record)."""
    if isinstance(container, dict):
        for key, value in container.items():
            kind = type(value)
            if kind is float:
                container[key] = _float(value)
            elif (kind is dict or kind is list) and value:
                _normalise_in_place(value)
        return
    for i, value in enumerate(container):
        kind = type(value)
        if kind is float:
            container[i] = _float(value)
        elif (kind is dict or kind is list) and value:
            _normalise_in_place(value)


def _normalise(value: Any) -> Any:
    """A normalised copy (for verification: the input is left as it was)."""
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return value


def canonical(record: dict[str, Any]) -> bytes:
    return orjson.dumps(_normalise(record), option=orjson.OPT_SORT_KEYS)


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 of the canonical bytes of `record` without its `hash` key."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def seal(record: dict[str, Any], seq: int, prev_hash: str) -> bytes:
    """Adds the chain fields to `record` (in place) and returns its canonical bytes.

    One serialisation instead of two (it is the largest cost of a record): the record is
    written with an unguessable placeholder as its hash; the canonical bytes without the
    hash are those bytes with the placeholder's `"hash":"…"` member cut out (keys are
    sorted, so nothing else moves), and the hash then takes the placeholder's place. A
    member with those exact bytes elsewhere would need the placeholder, 128 random bits
    drawn per record; tests check the result against `canonical` and `record_hash`."""
    record["seq"] = seq
    record["prev_hash"] = prev_hash
    _normalise_in_place(record)
    placeholder = os.urandom(16).hex()
    record["hash"] = placeholder
    data = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    member = b'"hash":"' + placeholder.encode() + b'"'
    at = data.find(member)
    end = at + len(member)
    if data[end:end + 1] == b",":  # "hash" is followed by another member
        body = data[:at] + data[end + 1:]
    elif data[at - 1:at] == b",":  # the last member
        body = data[:at - 1] + data[end:]
    else:  # the only member
        body = data[:at] + data[end:]
    digest = hashlib.sha256(body).hexdigest()
    record["hash"] = digest
    return data[:at + 8] + digest.encode() + data[end - 1:]


def stored_hash_matches(payload: bytes, stored_hash: str) -> bool:
    """Whether a record's stored bytes hash to its `hash`: the bytes with their `"hash"`
    member cut out are what was hashed when they are canonical (as the log stores them; see
    `seal`), so no re-serialisation is needed. Bytes that are not canonical do not match
    (verify then reports them altered)."""
    member = b'"hash":"' + stored_hash.encode() + b'"'
    at = payload.find(member)
    if at < 0:
        return False
    end = at + len(member)
    if payload[end:end + 1] == b",":
        body = payload[:at] + payload[end + 1:]
    elif payload[at - 1:at] == b",":
        body = payload[:at - 1] + payload[end:]
    else:
        body = payload[:at] + payload[end:]
    return hashlib.sha256(body).hexdigest() == stored_hash


#: Fields a checkpoint's signature does not cover: its own hash and signature, and its place.
SIGNATURE_EXCLUDES = frozenset({"hash", "signature", "seq", "prev_hash", "recorded_unix_ms"})


def signed_bytes(checkpoint: dict[str, Any]) -> bytes:
    return canonical({k: v for k, v in checkpoint.items() if k not in SIGNATURE_EXCLUDES})


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:16]


class Signer:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def sign(self, checkpoint: dict[str, Any]) -> None:
        """Sets `key_id` and `signature` on a checkpoint (before it is sealed)."""
        checkpoint["key_id"] = self.key_id
        checkpoint.pop("signature", None)
        checkpoint["signature"] = base64.b64encode(
            self.private_key.sign(signed_bytes(checkpoint))).decode()


def verify_signature(public_key: Ed25519PublicKey, checkpoint: dict[str, Any]) -> bool:
    try:
        signature = base64.b64decode(str(checkpoint.get("signature", "")), validate=True)
        public_key.verify(signature, signed_bytes(checkpoint))
    except (InvalidSignature, ValueError):
        return False
    return True


# -- keys -----------------------------------------------------------------------------------
PRIVATE_KEY_NAME = "signing.key"
PUBLIC_KEY_NAME = "signing.pub"


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A PEM (PKCS#8) Ed25519 private key, or its raw 32 bytes."""
    data = path.read_bytes()
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM Ed25519 private key nor 32 raw bytes ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: the key is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A PEM Ed25519 public key, its raw 32 bytes, those as 64 hex digits, or a PEM X.509
    certificate of it (the Helm chart publishes the log key's public key in one: Helm can
    make a certificate from a private key, not a bare public key)."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN CERTIFICATE-----"):
        try:
            data = x509.load_pem_x509_certificate(data).public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        except ValueError as exc:
            raise ValueError(f"{path}: not a PEM certificate of an Ed25519 key ({exc})") from None
    if len(data.strip()) == 64:
        with contextlib.suppress(ValueError):
            data = bytes.fromhex(data.strip().decode())
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM Ed25519 public key nor 32 raw bytes ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: the key is not an Ed25519 key")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def write_new_key(path: Path, public_path: Path) -> Ed25519PrivateKey:
    """A new Ed25519 key: PEM (PKCS#8) written 0600 (created with that mode, never widened),
    its public key PEM at `public_path` (0644, for `verify --public-key` and witnesses)."""
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_file(path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(public_pem(key.public_key()))
    return key


def key_in_data_dir(key_file: Path | None, data_dir: Path) -> bool:
    """Whether the log's signing key lies inside its data directory (the default, generated
    there, or a --signing-key-file under it, through symbolic links too)."""
    if key_file is None:
        return True
    return key_file.resolve().is_relative_to(data_dir.resolve())


#: The start-up warning for a key inside the data directory (one line; the metric
#: vllm_audit_signing_key_in_data_dir says the same to an alert).
KEY_IN_DATA_DIR_WARNING = (
    "the record log's signing key %s is inside the data directory %s: whoever has a copy of "
    "that directory (a backup, a volume snapshot, root in the pod) can rewrite the log and "
    "re-sign it so that verify finds it intact; keep the key apart (--signing-key-file on a "
    "read-only mount, `vllm-audit keygen` makes one) and have a witness cosign the checkpoints")


def load_or_create_signer(key_file: Path | None, data_dir: Path) -> Signer:
    """The configured key, or the one generated in `data_dir` at the first start (with its
    public key beside it). A key inside `data_dir` is warned about (KEY_IN_DATA_DIR_WARNING):
    the default suits one machine only."""
    path = data_dir / PRIVATE_KEY_NAME if key_file is None else key_file
    if key_in_data_dir(key_file, data_dir):
        logger.warning(KEY_IN_DATA_DIR_WARNING, path, data_dir)
    if key_file is not None or path.exists():
        return Signer(load_private_key(path))
    return Signer(write_new_key(path, data_dir / PUBLIC_KEY_NAME))
