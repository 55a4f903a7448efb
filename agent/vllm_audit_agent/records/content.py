"""Content sealing: a request record's prompt and output, when the capture policy kept them
readable (full or redact), are encrypted under the data subject's content key of the period
(content_keys.py) and the record carries only the ciphertext (`content`, its `prompt` and
`output` empty). The chain and the Merkle leaf cover the ciphertext, so destroying the key
(erasure of the subject, or the period's content expiry) leaves every record verifiable and
its content unreadable wherever a copy went (Kafka, the fleet store, the archive, exports).

What is not sealed, and why: `hmac` and `none` keep no content (an HMAC of a prompt is a
keyed fingerprint: it proves equality with a text someone already holds and reveals nothing
else; it stays as it was, so joins on it keep working), and `client_ip` is metadata kept for
security monitoring under its own policy (hmac by default).

Scheme `vllm-audit-content/1`: AES-256-GCM, a random 12-byte nonce per record, plaintext the
JSON object {"prompt": ..., "output": ...} of the sealed fields, associated data
`scheme \\n key_id \\n request_id`, so a ciphertext cannot be moved to another trail.

Views (`open_fields`): with the key, the prompt and output come back; without it, the content
says `erased: true` and why (`erasure`: "request" or "expiry"), its ciphertext left out.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vllm_audit_agent.records.content_keys import ContentKeyStore

SCHEME = "vllm-audit-content/1"
#: The fields content sealing covers, and the capture policies that keep them readable.
SEALED_FIELDS = ("prompt", "output")
READABLE_POLICIES = frozenset({"full", "redact"})
#: A record's `content` when nothing was sealed (SealedContent at its defaults).
NO_CONTENT: dict[str, Any] = {"scheme": "", "key_id": "", "period_end_ms": 0, "nonce": "",
                              "ciphertext": "", "erased": False, "erasure": ""}
#: Why a key a record names is gone when the store never heard of it (another agent's store,
#: or a store lost or replaced).
CAUSE_UNKNOWN = "key_unknown"


def readable_fields(capture_policy: str) -> tuple[str, ...]:
    """The sealed fields the capture policy kept readable ("prompt=full,output=hmac,...")."""
    policies = dict(part.partition("=")[::2] for part in capture_policy.split(",") if part)
    return tuple(f for f in SEALED_FIELDS if policies.get(f) in READABLE_POLICIES)


def _aad(key_id: str, request_id: str) -> bytes:
    return f"{SCHEME}\n{key_id}\n{request_id}".encode()


def seal_fields(fields: dict[str, Any], keys: ContentKeyStore) -> dict[str, Any] | None:
    """Seals the readable prompt and output of a record's fields in place (they become "",
    `content` the sealed form); returns the content, or None when there was none to seal."""
    plain = {f: fields[f] for f in readable_fields(str(fields.get("capture_policy", "")))
             if fields.get(f)}
    if not plain:
        return None
    key = keys.key_for(str(fields.get("tenant", "")), str(fields.get("user", "")),
                       int(keys.clock() * 1000))
    nonce = os.urandom(12)
    ciphertext = AESGCM(key.key).encrypt(nonce, orjson.dumps(plain, option=orjson.OPT_SORT_KEYS),
                                         _aad(key.key_id, str(fields["request_id"])))
    content = {**NO_CONTENT, "scheme": SCHEME, "key_id": key.key_id,
               "period_end_ms": key.period_end_ms, "nonce": base64.b64encode(nonce).decode(),
               "ciphertext": base64.b64encode(ciphertext).decode()}
    for name in plain:
        fields[name] = ""
    fields["content"] = content
    return content


def is_sealed(record: dict[str, Any]) -> bool:
    content = record.get("content")
    return isinstance(content, dict) and content.get("scheme") == SCHEME


def erased_content(content: dict[str, Any], cause: str) -> dict[str, Any]:
    """The view of content whose key is gone: no ciphertext, `erased` and why."""
    return {**content, "nonce": "", "ciphertext": "", "erased": True, "erasure": cause}


def open_fields(record: dict[str, Any], keys: ContentKeyStore | None) -> dict[str, Any]:
    """A copy of a record (or a trail summary's fields) for reading: sealed content opened
    with its key (prompt and output back in place), or marked erased when the key is gone.
    Without a key store, or for a record without sealed content, the record as it is."""
    if keys is None or not is_sealed(record):
        return record
    content = record["content"]
    key = keys.get(str(content["key_id"]))
    if key is None:
        cause = keys.why_gone(str(content["key_id"]), int(content.get("period_end_ms") or 0))
        return {**record, "content": erased_content(content, cause or CAUSE_UNKNOWN)}
    try:
        plain = orjson.loads(AESGCM(key.key).decrypt(
            base64.b64decode(content["nonce"]), base64.b64decode(content["ciphertext"]),
            _aad(key.key_id, str(record.get("request_id", "")))))
    except (InvalidTag, ValueError, orjson.JSONDecodeError):
        return {**record, "content": erased_content(content, "undecryptable")}
    opened = {**record}
    for name in SEALED_FIELDS:
        if isinstance(plain.get(name), str):
            opened[name] = plain[name]
    return opened


def open_payloads(payloads: Iterable[bytes], keys: ContentKeyStore) -> Iterator[bytes]:
    """Stored records with their sealed content opened (`open_fields`), as sorted JSON: what
    `export --open-content` writes. Records without sealed content pass as stored."""
    for payload in payloads:
        if b'"scheme":"' + SCHEME.encode() not in payload:
            yield payload
            continue
        record = orjson.loads(payload)
        yield orjson.dumps(open_fields(record, keys), option=orjson.OPT_SORT_KEYS)
