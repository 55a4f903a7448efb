"""Decoding `AllowedTokenSet` (events.proto): the one decoder the agent, `vllm-audit replay`
and the tests share (a `same_as_step` reference resolves against the trail's earlier steps),
with the structural check the agent runs before it acknowledges a batch and the exact wire
sizes the hook's encoder (vllm_hooks/allowed_set_encoder.py) compares.

Pure Python on purpose: it ships with the contract, which both the hook's image (vLLM's, with
numpy) and the agent's slim image (no numpy) install. Decoding goes through a byte array, so
a 128k-token set decodes in about a millisecond whatever its encoding.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from vllm_audit.v1 import events_pb2 as pb

#: The `AllowedTokenSet.encoding` oneof's members.
MEMBERS = tuple(f.name for f in pb.AllowedTokenSet.DESCRIPTOR.oneofs_by_name["encoding"].fields)
ALLOWED_IDS, DISALLOWED_IDS, RUNS, BITMASK, SAME_AS_STEP = MEMBERS
#: The forms that hold a set by themselves, in the hook's tie-break order: on equal sizes the
#: earlier (more readable) form wins. SAME_AS_STEP refers to a step holding one of these.
ENCODINGS = (ALLOWED_IDS, DISALLOWED_IDS, RUNS, BITMASK)
#: Earlier steps' sets of the same request, by step number (what SAME_AS_STEP refers to).
Earlier = Mapping[int, pb.AllowedTokenSet]


class AllowedSetError(ValueError):
    """The message is not a valid encoding of a set over the given vocabulary."""


def bitmask_bytes(vocab_size: int) -> int:
    """Bytes of a raw row: ceil(vocab_size / 32) int32 words."""
    return 4 * ((vocab_size + 31) // 32)


def varint_size(value: int) -> int:
    n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_FIELDS = pb.AllowedTokenSet.DESCRIPTOR.oneofs_by_name["encoding"].fields
#: The wire key (field number, length-delimited) of each member, and of the one packed field
#: inside the members that are messages (TokenIdDeltas, TokenRuns), from the descriptors.
_KEYS = {f.name: _varint(f.number << 3 | 2) for f in _FIELDS}
_PACKED_KEYS = {f.name: _varint(f.message_type.fields[0].number << 3 | 2)
                for f in _FIELDS if f.message_type is not None}
#: SAME_AS_STEP is a varint field (wire type 0).
_REFERENCE_KEY = _varint(pb.AllowedTokenSet.DESCRIPTOR.fields_by_name[SAME_AS_STEP].number << 3)


def reference_size(step: int) -> int:
    """Serialised bytes of an AllowedTokenSet that says same_as_step=`step`."""
    return len(_REFERENCE_KEY) + varint_size(step)


def frame(encoding: str, payload: bytes) -> bytes:
    """The serialised AllowedTokenSet whose member `encoding` carries `payload`: packed varints
    (an id or run list) or the raw row. The hook builds sets this way (numpy writes the
    varints; parsing the result is one C call), and `len(frame(e, p)) == wire_size(e, len(p))`."""
    inner = payload
    if encoding != BITMASK and payload:
        inner = _PACKED_KEYS[encoding] + _varint(len(payload)) + payload
    return _KEYS[encoding] + _varint(len(inner)) + inner


def wire_size(encoding: str, payload: int) -> int:
    """Serialised bytes of an AllowedTokenSet whose chosen member carries `payload` bytes: the
    packed varints of an id or run list, or the raw row. Equals `ByteSize()` of the message
    (a test holds the two together), so the hook can compare forms without building them."""
    inner = payload
    if encoding != BITMASK and payload:  # a message with one packed repeated field
        inner = len(_PACKED_KEYS[encoding]) + varint_size(payload) + payload
    return len(_KEYS[encoding]) + varint_size(inner) + inner


@dataclass(frozen=True)
class TokenSet:
    """A decoded set: `bitmask` is the canonical raw row (packed little-endian int32 words,
    bits past vocab_size zero), whatever encoding it came from."""

    vocab_size: int
    bitmask: bytes

    def __contains__(self, token: object) -> bool:
        if not isinstance(token, int) or not 0 <= token < self.vocab_size:
            return False
        return bool(self.bitmask[token >> 3] >> (token & 7) & 1)

    def __len__(self) -> int:
        return int.from_bytes(self.bitmask, "little").bit_count()

    def ids(self) -> list[int]:
        """The allowed ids, ascending."""
        out: list[int] = []
        for index, byte in enumerate(self.bitmask):
            if byte:
                base = index << 3
                out.extend(base + bit for bit in range(8) if byte >> bit & 1)
        return out

    def ranges(self) -> list[tuple[int, int]]:
        """The allowed ids as maximal [start, end) ranges, ascending."""
        out: list[tuple[int, int]] = []
        for token in self.ids():
            if out and out[-1][1] == token:
                out[-1] = (out[-1][0], token + 1)
            else:
                out.append((token, token + 1))
        return out


def check(token_set: pb.AllowedTokenSet, vocab_size: int, step: int = 0) -> str:
    """'' when `token_set` is a valid encoding over `vocab_size` tokens (held by grammar step
    `step`, 0 if unknown), else what is wrong. Costs a sum over the message's values, never a
    decode (the agent runs it on ingest). A reference is checked for its direction only: the
    step it names may be in another batch."""
    which = token_set.WhichOneof("encoding")
    if which is None:
        return "no encoding is set"
    if vocab_size <= 0:
        return f"vocab_size {vocab_size} leaves no token space"
    if which == SAME_AS_STEP:
        earlier = token_set.same_as_step
        if earlier < 1 or (step and earlier >= step):
            return f"same_as_step {earlier} is not an earlier step than {step or 'its own'}"
        return ""
    if which == BITMASK:
        data = token_set.bitmask
        if len(data) != bitmask_bytes(vocab_size):
            return (f"bitmask has {len(data)} bytes; vocab_size {vocab_size} needs "
                    f"{bitmask_bytes(vocab_size)}")
        tail = vocab_size % 32
        if tail and int.from_bytes(data[-4:], "little") >> tail:
            return f"bitmask sets bits at or past vocab_size {vocab_size}"
        return ""
    values: Sequence[int]
    if which == RUNS:
        values = token_set.runs.lengths
        if any(v == 0 for v in values[1:]):
            return "a run after the first has length 0"
        if sum(values) > vocab_size:
            return f"runs cover {sum(values)} tokens; vocab_size is {vocab_size}"
        return ""
    values = getattr(token_set, which).deltas
    if any(v == 0 for v in values[1:]):
        return f"{which} are not strictly ascending (a delta after the first is 0)"
    if values and sum(values) >= vocab_size:
        return f"{which} reach id {sum(values)}; vocab_size is {vocab_size}"
    return ""


def _ranges(token_set: pb.AllowedTokenSet, which: str) -> Iterator[tuple[int, int]]:
    """[start, end) ranges of the ids the member lists (allowed ones, or for
    DISALLOWED_IDS the disallowed ones)."""
    if which == RUNS:
        position, allowed = 0, False
        for length in token_set.runs.lengths:
            if allowed and length:
                yield position, position + length
            position += length
            allowed = not allowed
        return
    token = 0
    for delta in getattr(token_set, which).deltas:
        token += delta
        yield token, token + 1


def _fill(row: bytearray, start: int, end: int, value: bool) -> None:
    """Sets (or clears) bits [start, end) of a little-endian bit row, whole bytes at once."""
    while start < end and start & 7:
        _bit(row, start, value)
        start += 1
    full_end = end & ~7
    if start < full_end:
        row[start >> 3:full_end >> 3] = (b"\xff" if value else b"\x00") * ((full_end - start) >> 3)
        start = full_end
    while start < end:
        _bit(row, start, value)
        start += 1


def _bit(row: bytearray, token: int, value: bool) -> None:
    if value:
        row[token >> 3] |= 1 << (token & 7)
    else:
        row[token >> 3] &= ~(1 << (token & 7)) & 0xFF


def decode(token_set: pb.AllowedTokenSet, vocab_size: int, earlier: Earlier | None = None,
           step: int = 0) -> TokenSet:
    """Any encoding back into the set. A SAME_AS_STEP reference is resolved in `earlier` (the
    same request's sets by step number: a trail's steps). Raises AllowedSetError (saying what
    is wrong) for a message that is not a valid encoding over `vocab_size` tokens, or a
    reference to a step `earlier` lacks or that is itself a reference."""
    problem = check(token_set, vocab_size, step)
    if problem:
        raise AllowedSetError(problem)
    which = token_set.WhichOneof("encoding")
    if which == SAME_AS_STEP:
        number = token_set.same_as_step
        target = (earlier or {}).get(number)
        if target is None:
            raise AllowedSetError(f"same_as_step {number}: the trail has no set at step {number}")
        if target.WhichOneof("encoding") == SAME_AS_STEP:
            raise AllowedSetError(f"same_as_step {number}: step {number} is itself a reference")
        return decode(target, vocab_size)
    if which == BITMASK:
        return TokenSet(vocab_size, bytes(token_set.bitmask))
    size = bitmask_bytes(vocab_size)
    negate = which == DISALLOWED_IDS
    row = bytearray(size)
    if negate:
        _fill(row, 0, vocab_size, True)
    assert which is not None
    for start, end in _ranges(token_set, which):
        if end - start == 1:
            _bit(row, start, not negate)
        else:
            _fill(row, start, end, not negate)
    return TokenSet(vocab_size, bytes(row))


def sets_by_step(steps: Iterable[pb.StructuredOutputStep]) -> dict[int, pb.AllowedTokenSet]:
    """The `earlier` mapping of `decode` for one request's steps."""
    return {s.step: s.allowed_set for s in steps if s.HasField("allowed_set")}


def encoding_of(token_set: pb.AllowedTokenSet) -> str:
    """The member the message uses ('' when none)."""
    return token_set.WhichOneof("encoding") or ""
