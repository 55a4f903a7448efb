"""A stored record's chain fields read from its bytes, without parsing the record.

Parsing a ~3 KB summary record (orjson) builds every value of it and was most of what `verify`
and `export` spent per record; they need six top-level fields. The log stores canonical JSON
(chain.py: compact, keys sorted at every level), so a top-level member is found by its bytes:
`"seq":` can only be a key (inside a string every quote is escaped), and for a record written
by the log each of these keys occurs once. A key found is taken only when it occurs once in
the whole payload: a nested member of the same name (a lookalike an object's value may hold)
sends the record to the exact path, never gives its value as the record's.

What is found is a *claim*, never trusted by itself: `verify` takes a record this way only
when every check passes on it (the seq is the one expected, `prev_hash` is the previous hash,
the bytes without the `"hash"` member found here hash to it) and parses it (the exact path)
otherwise, before it reports anything; a record naming a signed type anywhere in its bytes is
always parsed, so every checkpoint, genesis, seal, cosignature and erasure gets the full
checks. The Merkle leaf is the hash of the whole payload either way, so a record the writer
did not write still fails at the checkpoint that covers it. `export` takes a field only when
its key occurs exactly once (else it parses).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

#: Types whose records are always parsed (their own signatures, the tree's start and notes).
PARSED_TYPES = frozenset({b"checkpoint", b"genesis", b"seal", b"cosignature", b"erasure"})
_TYPE = b'"type":"'
_HASH = b'"hash":"'
_TIME = b'"recorded_unix_ms":'
_HEX_LEN = 64
_INT = re.compile(rb"-?[0-9]+")
#: The chain's keys as members (`"key":`); inside a string every quote is escaped.
_CHAIN_KEYS = re.compile(rb'"(hash|log_id|prev_hash|seq|type)":')


class ChainFields(NamedTuple):
    seq: int
    hash: str
    prev_hash: str
    log_id: str | None
    type: str
    #: Where the `"hash":"…"` member starts in the payload (for the hash check's cut).
    hash_at: int


def _int_at(payload: bytes, at: int) -> int | None:
    """The decimal integer starting at `at` (None: not one)."""
    match = _INT.match(payload, at)
    return int(match.group()) if match is not None else None


def chain_fields(payload: bytes) -> ChainFields | None:
    """The chain fields as the payload's bytes name them; None when the record must be parsed
    (a signed type, a key missing, found twice or of an unexpected form). One regex pass over
    the bytes finds every chain key and whether it is unique: 5.4 µs on a 2.8 KB record, where
    backward finds without the uniqueness check took 4.1 and a find per key both ways 14."""
    at: dict[bytes, int] = {}
    for found in _CHAIN_KEYS.finditer(payload):
        name = found.group(1)
        if name in at:
            return None  # a nested lookalike: the exact path tells which is the record's
        at[name] = found.end()
    type_at, seq_at, prev_at, hash_at = at.get(b"type"), at.get(b"seq"), \
        at.get(b"prev_hash"), at.get(b"hash")
    if type_at is None or seq_at is None or prev_at is None or hash_at is None:
        return None
    end = payload.find(b'"', type_at + 1)
    kind = payload[type_at + 1:end]
    if payload[type_at:type_at + 1] != b'"' or end < 0 or kind in PARSED_TYPES \
            or b"\\" in kind:
        return None
    match = _INT.match(payload, seq_at)
    prev = payload[prev_at:prev_at + _HEX_LEN + 2]
    stored = payload[hash_at:hash_at + _HEX_LEN + 2]
    if match is None or not _is_hex_string(prev) or not _is_hex_string(stored):
        return None
    log_id: str | None = None
    log_at = at.get(b"log_id")
    if log_at is not None:
        if payload[log_at:log_at + 1] == b'"':
            end = payload.find(b'"', log_at + 1)
            log_id = payload[log_at + 1:end].decode()
            if end < 0 or "\\" in log_id:
                return None
        elif payload[log_at:log_at + 4] != b"null":
            return None
    return ChainFields(int(match.group()), stored[1:-1].decode(), prev[1:-1].decode(), log_id,
                       kind.decode(), hash_at - len(_HASH) + 1)


def parsed_fields(record: Any, payload: bytes) -> ChainFields | None:
    """The chain fields of a record parsed already (the fleet consumer parses each record once,
    for its store columns and its routing, and hands the verifier these): the values are the
    record's own, so only where its `"hash"` member sits is looked for in the bytes — the
    member with that very value, taken when it occurs once (then it is the record's; a nested
    copy of it sends the record to the exact path). 0.3 µs where chain_fields' regex pass
    costs ~6 on a 2.8 KB record. None as chain_fields: a signed type, or a field of another
    form than the log writes (the record is then parsed and checked exactly)."""
    if record.__class__ is not dict:
        return None
    seq, kind, prev, stored = record.get("seq"), record.get("type"), record.get("prev_hash"), \
        record.get("hash")
    log_id = record.get("log_id")
    if seq.__class__ is not int or kind.__class__ is not str or prev.__class__ is not str \
            or stored.__class__ is not str or len(prev) != _HEX_LEN or len(stored) != _HEX_LEN \
            or (log_id is not None and log_id.__class__ is not str):
        return None
    if kind.encode() in PARSED_TYPES:
        return None
    member = _HASH + stored.encode() + b'"'
    at = payload.find(member)
    if at < 0 or payload.find(member, at + 1) >= 0:
        return None
    return ChainFields(seq, stored, prev, log_id, kind, at)


def _is_hex_string(value: bytes) -> bool:
    """`"` + 64 characters + `"` (what a hash's member value is; its digits are compared)."""
    return len(value) == _HEX_LEN + 2 and value[:1] == b'"' and value[-1:] == b'"'


def unique_int(payload: bytes, key: bytes) -> int | None:
    """The integer value of `"key":` when the key occurs exactly once (None: else)."""
    at = payload.find(key)
    if at < 0 or payload.find(key, at + 1) >= 0:
        return None
    return _int_at(payload, at + len(key))


def time_and_type(payload: bytes) -> tuple[int, str | None] | None:
    """(`recorded_unix_ms`, `type`) of a record whose keys for them occur once each (None:
    parse it). A record without `type` gives None for it, as `record.get` would."""
    when = unique_int(payload, _TIME)
    if when is None:
        return None
    at = payload.find(b'"type":')
    if at < 0:
        return when, None
    end = payload.find(b'"', at + len(_TYPE))
    if not payload.startswith(_TYPE, at) or end < 0 or payload.find(b'"type":', at + 1) >= 0:
        return None
    value = payload[at + len(_TYPE):end]
    return (when, value.decode()) if b"\\" not in value else None


def hash_matches(payload: bytes, fields: ChainFields) -> bool:
    """Whether the payload without the `"hash"` member found at `fields.hash_at` hashes to
    `fields.hash` (as chain.stored_hash_matches, without copying the bytes)."""
    at = fields.hash_at
    end = at + len(_HASH) + _HEX_LEN + 1
    view = memoryview(payload)
    digest = hashlib.sha256()
    if payload[end:end + 1] == b",":  # "hash" is followed by another member
        digest.update(view[:at])
        digest.update(view[end + 1:])
    elif payload[at - 1:at] == b",":  # the last member
        digest.update(view[:at - 1])
        digest.update(view[end:])
    else:  # the only member
        digest.update(view[:at])
        digest.update(view[end:])
    return digest.hexdigest() == fields.hash
