#!/usr/bin/env python3
"""Checks a `vllm-audit prove` bundle with nothing of vllm-audit: hashlib and an Ed25519
implementation (here `cryptography`). Usage:

    check_proof.py BUNDLE.json LOG_PUBLIC_KEY_HEX [WITNESS_NAME=WITNESS_PUBLIC_KEY_HEX ...]

Exit 0 and "proven" when the record is in the log's tree whose root the log signed (and every
witness given cosigned it); exit 1 naming the first check that fails. RFC 9162 §2.1.3.2 for
the path, C2SP signed-note and tlog-cosignature for the checkpoint.
"""
import base64
import hashlib
import json
import struct
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def root_from_path(index: int, size: int, leaf: bytes, path: list[bytes]) -> bytes:
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ValueError("path too long")
        if fn & 1 or fn == sn:
            r = sha(b"\x01" + p + r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = sha(b"\x01" + r + p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("path too short")
    return r


def signed_by(sigs: dict, name: str, kind: bytes, key: bytes, message_of) -> bool:
    want = sha(name.encode() + b"\n" + kind + key)[:4]
    for value in sigs.get(name, []):
        raw = base64.b64decode(value)
        if raw[:4] == want:
            body, signature = message_of(raw)
            try:
                Ed25519PublicKey.from_public_bytes(key).verify(signature, body)
                return True
            except Exception:  # an invalid signature
                return False
    return False


def check(bundle: dict, log_key: bytes, witnesses: dict) -> str:
    leaf = sha(b"\x00" + bundle["record"].encode())
    path = [bytes.fromhex(h) for h in bundle["inclusion_path"]]
    root = root_from_path(bundle["leaf_index"], bundle["tree_size"], leaf, path)
    text, _, sig_lines = bundle["checkpoint"].partition("\n\n")
    body = text + "\n"
    origin, size, root_b64 = text.split("\n")[:3]
    if int(size) != bundle["tree_size"] or base64.b64decode(root_b64) != root:
        return "the path does not lead to the checkpoint's root"
    sigs: dict = {}
    for line in sig_lines.splitlines():
        name, value = line[2:].rsplit(" ", 1)
        sigs.setdefault(name, []).append(value)
    if not signed_by(sigs, origin, b"\x01", log_key, lambda raw: (body.encode(), raw[4:])):
        return "the checkpoint is not signed by the log's key"
    for name, key in witnesses.items():
        def cosigned(raw: bytes) -> tuple[bytes, bytes]:
            when = struct.unpack(">Q", raw[4:12])[0]
            return f"cosignature/v1\ntime {when}\n{body}".encode(), raw[12:]
        if not signed_by(sigs, name, b"\x04", key, cosigned):
            return f"witness {name} did not cosign the checkpoint"
    return ""


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        given = json.load(f)
    keys = dict(arg.split("=", 1) for arg in sys.argv[3:])
    problem = check(given, bytes.fromhex(sys.argv[2]), {n: bytes.fromhex(k) for n, k in keys.items()})
    print(problem or "proven")
    sys.exit(1 if problem else 0)
