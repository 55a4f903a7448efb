"""A stored record's chain fields read from its bytes, without parsing the record.

Parsing a ~3 KB summary record (orjson) builds every value of it and was most of what `verify`
and `export` spent per record; they need six top-level fields. The log stores canonical JSON
(chain.py: compact, keys sorted at every level), so a top-level member is found by its bytes:
`"seq":` can only be a key (inside a string every quote is escaped), and for a record written
by the log each of these keys occurs once.

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
from typing import NamedTuple

#: Types whose records are always parsed (their own signatures, the tree's start and notes).
PARSED_TYPES = frozenset({b"checkpoint", b"genesis", b"seal", b"cosignature", b"erasure"})
_TYPE = b'"type":"'
_HASH = b'"hash":"'
_LOG_ID = b'"log_id":'
_PREV = b'"prev_hash":"'
_SEQ = b'"seq":'
_TIME = b'"recorded_unix_ms":'
_HEX_LEN = 64
_INT = re.compile(rb"-?[0-9]+")


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
    (a signed type, a field missing or of an unexpected form). Keys are sorted and `type`
    comes after the others, so each is looked for backwards from the one after it: one pass
    over the bytes from `"hash"` to the end, which is most of the cost of taking a record."""
    type_at = payload.rfind(_TYPE)
    end = payload.find(b'"', type_at + 8)  # 8: len(_TYPE)
    kind = payload[type_at + 8:end]
    if type_at < 0 or end < 0 or kind in PARSED_TYPES or b"\\" in kind:
        return None
    at = payload.rfind(_SEQ, 0, type_at)
    match = _INT.match(payload, at + 6)  # 6: len(_SEQ)
    if at < 0 or match is None:
        return None
    at = payload.rfind(_PREV, 0, at)
    prev = payload[at + 13:at + 13 + _HEX_LEN + 1]  # 13: len(_PREV)
    if at < 0 or prev[-1:] != b'"':
        return None
    log_id: str | None = None
    log_at = payload.rfind(_LOG_ID, 0, at)
    if log_at >= 0:
        at = log_at
        if payload[at + 9:at + 10] == b'"':  # 9: len(_LOG_ID)
            end = payload.find(b'"', at + 10)
            log_id = payload[at + 10:end].decode()
            if end < 0 or "\\" in log_id:
                return None
        elif payload[at + 9:at + 13] != b"null":
            return None
    hash_at = payload.rfind(_HASH, 0, at)
    stored = payload[hash_at + 8:hash_at + 8 + _HEX_LEN + 1]  # 8: len(_HASH)
    if hash_at < 0 or stored[-1:] != b'"':
        return None
    return ChainFields(int(match.group()), stored[:-1].decode(), prev[:-1].decode(), log_id,
                       kind.decode(), hash_at)


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
