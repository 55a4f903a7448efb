"""The witness's decision on one add-checkpoint request (C2SP tlog-witness), in the spec's
order: a well-formed body, an origin it serves, the log's signature by a configured key, then,
under the origin's lock, the sizes and the consistency proof against what it last cosigned.

Keys are per log key, not per log: any origin `vllm-audit/<id>` signed by a configured key is
served, and the first checkpoint of an origin is recorded as its first sight. A checkpoint
that passes is persisted before the cosignature is returned; every refusal is counted by
reason and logged (once a minute per origin and reason, with how many were not logged).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vllm_audit_agent.records import note
from vllm_audit_agent.records.merkle import EMPTY_ROOT, verify_consistency
from vllm_audit_agent.records.witness_protocol import (
    REFUSAL_REASONS,
    SIZE_CONTENT_TYPE,
    AddCheckpoint,
    encode_size,
    parse_request,
)
from vllm_audit_agent.witness.history import shows_fork
from vllm_audit_agent.witness.store import LogState, WitnessStore, log_id_of

logger = logging.getLogger("vllm_audit.witness")

#: A refusal of one origin and reason is logged at most once in this many seconds.
LOG_INTERVAL_S = 60.0


@dataclass(frozen=True)
class Answer:
    status: int
    text: str
    #: The refusal's reason (REFUSAL_REASONS); "" for a cosignature.
    reason: str = ""
    content_type: str = "text/plain"


class RefusalLog:
    """One log line per (origin, reason) a minute; the lines not written are counted in it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._quiet: Counter[tuple[str, str]] = Counter()

    def refused(self, origin: str, reason: str, why: str) -> None:
        key = (origin, reason)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < LOG_INTERVAL_S:
            self._quiet[key] += 1
            return
        if len(self._last) > 10_000:  # a flood of bogus origins does not grow this forever
            self._last.clear()
        self._last[key] = now
        quiet = self._quiet.pop(key, 0)
        more = f" ({quiet} more since the last line)" if quiet else ""
        logger.warning("refused a checkpoint of %r: %s: %s%s", origin[:200], reason, why, more)


class Witness:
    def __init__(self, name: str, key: Ed25519PrivateKey, log_keys: Sequence[Ed25519PublicKey],
                 store: WitnessStore, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.key = key
        self.log_keys = tuple(log_keys)
        self.store = store
        self.clock = clock
        self.counters: Counter[str] = Counter({f"refused_{r}": 0 for r in REFUSAL_REASONS})
        self.refusal_log = RefusalLog()
        self._locks: dict[str, asyncio.Lock] = {}

    def _refuse(self, origin: str, reason: str, status: int, why: str,
                size: int | None = None) -> Answer:
        self.counters[f"refused_{reason}"] += 1
        self.refusal_log.refused(origin, reason, why)
        if size is not None:  # the spec's 409: the size it cosigned, as text/x.tlog.size
            return Answer(status, encode_size(size), reason, SIZE_CONTENT_TYPE)
        return Answer(status, f"{reason}: {why}\n", reason)

    async def add_checkpoint(self, body: bytes) -> Answer:
        try:
            request = parse_request(body)
            signed = note.parse(request.note_text)
        except ValueError as exc:
            return self._refuse("", "malformed", 400, str(exc))
        checkpoint = signed.checkpoint
        origin = checkpoint.origin
        if log_id_of(origin) is None:
            return self._refuse(origin, "unknown_key", 404,
                                f"origin {origin[:200]!r} is not vllm-audit/<log id>")
        if not any(note.log_signature_valid(signed, key) for key in self.log_keys):
            if any(self._names_key(signed, key) for key in self.log_keys):
                return self._refuse(origin, "bad_signature", 403,
                                    "the signature of a configured log key does not verify")
            return self._refuse(origin, "unknown_key", 403,
                                "no signature by a configured log key")
        lock = self._locks.setdefault(origin, asyncio.Lock())
        async with lock:  # checking `old` and persisting the new size are one step (the spec)
            return await self._against_state(request, signed)

    @staticmethod
    def _names_key(signed: note.SignedNote, key: Ed25519PublicKey) -> bool:
        """A signature line claims to be by `key` (its key hash), whether or not it verifies."""
        origin = signed.checkpoint.origin
        want = note.key_hash(origin, note.ED25519, key)  # the signed-note Ed25519 key hash
        for name, value in signed.signatures:
            try:
                raw = base64.b64decode(value, validate=True)
            except ValueError:
                continue
            if name == origin and raw[:4] == want:
                return True
        return False

    async def _against_state(self, request: AddCheckpoint, signed: note.SignedNote) -> Answer:
        checkpoint = signed.checkpoint
        origin, size, root = checkpoint.origin, checkpoint.size, checkpoint.root
        stored = self.store.get(origin)
        have = stored.size if stored is not None else 0
        if stored is not None and size < stored.size:
            return self._refuse(origin, "rollback", 400 if request.old_size > size else 409,
                                f"size {size} is below the {stored.size} it cosigned", stored.size)
        if request.old_size > size:
            return self._refuse(origin, "malformed", 400,
                                f"old size {request.old_size} is above the checkpoint's {size}")
        if stored is not None and size == stored.size and root != stored.root:
            return self._refuse(origin, "fork", 409,
                                f"size {size} with another root than the one it cosigned", have)
        if request.old_size != have:
            return self._refuse(origin, "old_size_mismatch", 409,
                                f"old size {request.old_size}, it cosigned {have}", have)
        if size == 0 and root != EMPTY_ROOT:
            return self._refuse(origin, "bad_proof", 422, "an empty tree with another root")
        if stored is not None and not verify_consistency(stored.size, size, stored.root, root,
                                                         request.proof):
            if shows_fork(stored.size, size, stored.root, root, request.proof):
                return self._refuse(origin, "fork", 422, f"the tree of size {size} does not "
                                    f"hold the tree of size {stored.size} it cosigned")
            return self._refuse(origin, "bad_proof", 422, f"the consistency proof from "
                                f"{stored.size} to {size} does not verify")
        return await self._cosign(signed, stored)

    async def _cosign(self, signed: note.SignedNote, stored: LogState | None) -> Answer:
        now = int(self.clock())
        name, value = note.cosign(signed.checkpoint, self.name, self.key, now)
        line = f"{note.SIGNATURE_DASH}{name} {value}\n"
        own = tuple(s for s in signed.signatures if s[0] != self.name)
        cosigned = note.SignedNote(signed.checkpoint, own).with_signature(name, value)
        checkpoint = signed.checkpoint
        state = LogState(checkpoint.origin, checkpoint.size, checkpoint.root, cosigned.text(),
                         stored.first_seen_unix if stored is not None else now, now)
        try:
            await asyncio.to_thread(self.store.put, state)
        except OSError as exc:  # not the client's fault: no cosignature without the state
            self.counters["state_write_errors"] += 1
            logger.error("could not persist the state of %r: %s", checkpoint.origin, exc)
            return Answer(503, f"the witness could not persist its state: {exc.strerror}\n")
        if stored is None:
            logger.info("first checkpoint of %s: size %d", checkpoint.origin, checkpoint.size)
        self.counters["cosigned"] += 1
        return Answer(200, line)
