"""Checkpoints leaving the pod for witnesses (C2SP tlog-witness), and their cosignatures coming
back into the record log.

Each durable checkpoint of the record log is offered to every configured witness with a
consistency proof from the size that witness last cosigned; each witness has its own task, so
a slow or dead one delays nobody else, and the agent's loop never waits on one (the listener
only notes the newest checkpoint). A cosignature is appended to the record log as a record of
type "cosignature"; once every witness has cosigned a size, the log may drop what proofs from
earlier sizes needed (`witnessed`).

A witness that does not know what it cosigned for this log is asked from size 0 (as the spec
allows); its 409 names the size, and the checkpoint is offered again once with a proof from
there. Only the newest checkpoint is offered: a witness that was away skips the ones it missed
(a proof from its size covers them). Nothing waits for a witness: records are never held back,
a witness that is down is retried with backoff (counted as unreachable), one that refuses is
counted by reason (fork and rollback: the log showed it two histories).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from vllm_audit_agent.records.note import SIGNATURE_DASH
from vllm_audit_agent.records.witness_protocol import (
    ADD_CHECKPOINT_PATH,
    REFUSAL_HEADER,
    REFUSAL_REASONS,
    encode_request,
    parse_size,
)

logger = logging.getLogger("vllm_audit.agent")

#: Why an offer got no answer a witness meant (closed set, exported at 0 per witness).
WITNESS_ERRORS = ("unreachable", "http_error", "bad_answer", "proof_unavailable", "internal")
#: Backoff between offers to a witness that failed or refused, doubling up to the cap.
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0
#: Refusals a witness answers without our header (another implementation): by status.
_BY_STATUS = {400: "malformed", 403: "unknown_key", 404: "unknown_key", 413: "malformed",
              422: "bad_proof"}


class WitnessedLog(Protocol):
    """What the cosigner needs of the record log (records/log.py implements it)."""

    log_id: str

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]: ...

    def append_cosignature(self, checkpoint_seq: int, tree_size: int, witness: str,
                           note_text: str) -> int: ...

    def add_checkpoint_listener(self, listener: Callable[[dict[str, Any]], None]) -> None: ...

    def witnessed(self, size: int) -> None: ...


@dataclass(frozen=True)
class Offer:
    seq: int
    size: int
    note: str
    #: When the checkpoint was durable (wall clock).
    seen: float


@dataclass
class WitnessView:
    """One witness as the cosigner sees it (the metrics read it)."""

    url: str
    #: The size the witness last cosigned for this log, as far as the agent knows (0: unknown).
    size: int = 0
    #: The newest size it cosigned in this run (what `witnessed` may rely on).
    confirmed: int = 0
    cosigned: int = 0
    refused: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys(REFUSAL_REASONS, 0)))
    errors: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys(WITNESS_ERRORS, 0)))
    #: When the oldest checkpoint it has not cosigned became durable (None: it is caught up).
    behind_since: float | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Cosigner:
    def __init__(self, log: WitnessedLog, urls: Sequence[str], timeout: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.log = log
        self.timeout = timeout
        self.clock = clock
        self.witnesses = [WitnessView(url.rstrip("/")) for url in urls]
        self.latest: Offer | None = None
        self._witnessed = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self.log.add_checkpoint_listener(self._on_checkpoint)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        self._tasks = [asyncio.create_task(self._run(w), name=f"witness {w.url}")
                       for w in self.witnesses]

    async def stop(self, timeout: float) -> None:
        """Idempotent; an offer under way is abandoned (the witness keeps its own state)."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def uncosigned_seconds(self, witness: WitnessView) -> float:
        """Age of the oldest durable checkpoint the witness has not cosigned (0: none)."""
        since = witness.behind_since
        return max(0.0, self.clock() - since) if since is not None else 0.0

    # -- the record log's listener (the agent's loop: no I/O) ----------------------------------
    def _on_checkpoint(self, record: dict[str, Any]) -> None:
        offer = Offer(int(record["seq"]), int(record["tree_size"]), str(record["note"]),
                      self.clock())
        self.latest = offer
        for w in self.witnesses:
            if w.confirmed < offer.size and w.behind_since is None:
                w.behind_since = offer.seen
            w.wake.set()

    # -- one task per witness -----------------------------------------------------------------
    async def _run(self, w: WitnessView) -> None:
        backoff = RETRY_FIRST_S
        while True:
            await w.wake.wait()
            w.wake.clear()
            offer = self.latest
            if offer is None or w.confirmed >= offer.size:
                continue
            try:
                done = await self._offer(w, offer)
            except Exception as exc:  # never let one witness's surprise end its task
                w.errors["internal"] += 1
                logger.exception("offering a checkpoint to witness %s failed: %r", w.url, exc)
                done = False
            if done:
                backoff = RETRY_FIRST_S
                continue
            await asyncio.sleep(backoff)
            backoff = min(RETRY_MAX_S, backoff * 2)
            w.wake.set()  # offer the newest checkpoint again

    async def _offer(self, w: WitnessView, offer: Offer) -> bool:
        """Offers `offer` to `w` (once more from the size a 409 names); True once cosigned."""
        for _ in range(2):
            try:
                proof = self.log.consistency_proof(w.size, offer.size) if w.size else []
            except ValueError as exc:
                w.errors["proof_unavailable"] += 1
                logger.warning("no consistency proof for witness %s: %s", w.url, exc)
                return False
            answer = await self._post(w, encode_request(w.size, proof, offer.note))
            if answer is None:
                return False
            status, text, reason = answer
            if status == 200:
                return self._cosigned(w, offer, text)
            if status == 409 and self._conflict(w, offer, text, reason):
                continue  # a stale size: once more, from the size the witness cosigned
            if status != 409:
                self._refused(w, offer, reason or _BY_STATUS.get(status, ""), status, text)
            return False
        return False

    async def _post(self, w: WitnessView, body: bytes) -> tuple[int, str, str] | None:
        assert self._session is not None
        try:
            async with self._session.post(w.url + ADD_CHECKPOINT_PATH, data=body) as response:
                text = await response.text(errors="replace")
                return response.status, text, response.headers.get(REFUSAL_HEADER, "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            w.errors["unreachable"] += 1
            if w.errors["unreachable"] == 1 or w.errors["unreachable"] % 100 == 0:
                logger.warning("witness %s unreachable (%d times): %r", w.url,
                               w.errors["unreachable"], exc)
            return None

    def _cosigned(self, w: WitnessView, offer: Offer, text: str) -> bool:
        lines = text.splitlines(keepends=True)
        if not lines or not all(line.startswith(SIGNATURE_DASH) and line.endswith("\n")
                                for line in lines):
            w.errors["bad_answer"] += 1
            logger.warning("witness %s answered 200 without cosignature lines: %r", w.url,
                           text[:200])
            return False
        self.log.append_cosignature(offer.seq, offer.size, w.url, offer.note + text)
        w.size = w.confirmed = offer.size
        w.cosigned += 1
        latest = self.latest
        w.behind_since = latest.seen if latest is not None and latest.size > offer.size else None
        lowest = min(x.confirmed for x in self.witnesses)
        if lowest > self._witnessed:
            self._witnessed = lowest
            self.log.witnessed(lowest)
        return True

    def _conflict(self, w: WitnessView, offer: Offer, text: str, reason: str) -> bool:
        """A 409: True when only the size we sent was stale (worth once more from its size)."""
        try:
            theirs = parse_size(text)
        except ValueError:
            w.errors["bad_answer"] += 1
            return False
        if not reason:  # another implementation: tell them apart by the sizes
            reason = ("rollback" if theirs > offer.size else
                      "fork" if theirs == offer.size == w.size else "old_size_mismatch")
        self._refused(w, offer, reason, 409, text)
        if reason != "old_size_mismatch" or theirs > offer.size:
            return False
        w.size = theirs
        return True

    def _refused(self, w: WitnessView, offer: Offer, reason: str, status: int, text: str) -> None:
        if reason not in REFUSAL_REASONS:
            w.errors["http_error"] += 1
            logger.warning("witness %s answered %d: %s", w.url, status, text[:200].strip())
            return
        w.refused[reason] += 1
        if reason == "old_size_mismatch":
            return  # the protocol's way to learn the witness's size, after a restart
        log = logger.error if reason in ("fork", "rollback") else logger.warning
        log("witness %s refused the checkpoint of size %d (seq %d): %s (%d: %s)", w.url,
            offer.size, offer.seq, reason, status, text[:200].strip())
