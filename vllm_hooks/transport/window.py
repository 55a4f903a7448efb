"""The batches a sender keeps until the agent answers them.

Shared by the sender thread (adds, resends, watches the deadline) and the stream's reader
thread (answers), under one lock.

- A batch stays until the agent stores it (ack) or refuses it for a permanent reason. One
  refused for a retriable reason stays, marked, for a later retry.
- The window is bounded by bytes. Only refused batches are dropped past the cap (the oldest
  first), counted (`unacked_overflow`): a batch the agent has not answered yet may already be
  stored, so dropping it could count a loss that did not happen. Unanswered batches are bounded
  by the sender's back-pressure instead.
- A dropped batch's events are counted under the reason in the buffer's drop counts, its own
  gap marker's counts are put back there, and its seq joins the missing range that the next
  batch's gap marker names. Counts first, then the range, in one step under the lock: whoever
  takes the range finds its counts already in the buffer, and flush never sees a batch gone but
  not yet named.
- Sent-but-unanswered batches are also kept in send order with their send time, so the oldest
  one, which the ack deadline watches, is found in O(1). The deadline measures silence, not
  queueing: it counts from the oldest batch's send or the last answer, whichever is later. An
  agent that answers, only slower than the hook sends (a window of 64 MiB can hold more than
  the deadline's worth of its work), is making progress: cancelling its stream resent the
  whole window at every deadline and the agent, handed everything again from the oldest
  batch, fell further behind (seen at 10k requests/s in the fault suite).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from vllm_audit.v1 import events_pb2 as pb
from vllm_hooks.transport import refusals
from vllm_hooks.transport.buffer import EventBuffer


@dataclass
class _Kept:
    batch: pb.Batch
    size: int
    #: The agent answered "not stored" for a retriable reason; only such batches may be
    #: dropped under the cap.
    refused: bool = False


class Outcome(Enum):
    UNKNOWN = "unknown"  # not kept (answered already, or dropped)
    KEPT = "kept"  # refused for a retriable reason: kept for a retry
    STORED = "stored"
    DROPPED = "dropped"  # refused for a permanent reason: dropped, counted and named


class UnackedWindow:
    def __init__(self, max_bytes: int, buffer: EventBuffer) -> None:
        self._max_bytes = max_bytes
        self._buffer = buffer
        self._lock = threading.Lock()
        self._kept: OrderedDict[int, _Kept] = OrderedDict()
        self._bytes = 0
        self._refused_bytes = 0
        #: Sent and not answered yet, in send order: seq -> monotonic send time.
        self._inflight: OrderedDict[int, float] = OrderedDict()
        self._missing: tuple[int, int] | None = None
        #: Monotonic time of the agent's last answer (any answer shows the stream is alive).
        self._last_answer = 0.0

    # -- the sender thread -------------------------------------------------------------------
    def add(self, batch: pb.Batch, size: int) -> int:
        """Keeps a batch just sent. Returns how many refused batches the cap dropped."""
        with self._lock:
            self._kept[batch.seq] = _Kept(batch, size)
            self._bytes += size
            self._inflight[batch.seq] = time.monotonic()
            return self._evict_refused_over_cap()

    def take_for_resend(self, refused_only: bool, limit: int | None = None,
                        restart: bool = False) -> list[pb.Batch]:
        """Marks kept batches as unanswered again (oldest first) and returns them to send.
        `restart`: a new stream, on which nothing is in flight yet."""
        out: list[pb.Batch] = []
        now = time.monotonic()
        with self._lock:
            if restart:
                self._inflight.clear()
            for seq, entry in self._kept.items():
                if limit is not None and len(out) >= limit:
                    break
                if refused_only and not entry.refused:
                    continue
                if entry.refused:
                    entry.refused = False
                    self._refused_bytes -= entry.size
                self._inflight.pop(seq, None)
                self._inflight[seq] = now
                out.append(entry.batch)
        return out

    def take_missing(self) -> tuple[int, int] | None:
        """The seq range of dropped batches not named yet; the caller's batch names it."""
        with self._lock:
            missing, self._missing = self._missing, None
        return missing

    def oldest_unanswered_age(self) -> float:
        """Seconds the oldest unanswered batch has waited with no answer to any batch since:
        0 when nothing is unanswered."""
        with self._lock:
            sent = next(iter(self._inflight.values()), None)
            last_answer = self._last_answer
        return 0.0 if sent is None else time.monotonic() - max(sent, last_answer)

    def unanswered_bytes(self) -> int:
        with self._lock:
            return self._bytes - self._refused_bytes

    # -- the reader thread -------------------------------------------------------------------
    def answer(self, seq: int, refused: bool, refusal: int) -> tuple[Outcome, int]:
        """Applies the agent's answer to batch `seq`. Returns the outcome and the batch's
        number of events."""
        with self._lock:
            self._last_answer = time.monotonic()
            entry = self._kept.get(seq)
            if entry is None:
                return Outcome.UNKNOWN, 0
            events = len(entry.batch.events)
            self._inflight.pop(seq, None)
            if refused and not refusals.is_permanent(refusal):
                if not entry.refused:
                    entry.refused = True
                    self._refused_bytes += entry.size
                return Outcome.KEPT, events
            self._remove(seq, entry)
            if refused:
                self._account_lost(entry.batch, refusals.drop_reason(refusal))
                return Outcome.DROPPED, events
            return Outcome.STORED, events

    def has_refused(self) -> bool:
        with self._lock:
            return self._refused_bytes > 0

    # -- any thread --------------------------------------------------------------------------
    def all_answered(self) -> bool:
        """Nothing kept for resend and no dropped batch still to be named by a gap marker."""
        with self._lock:
            return not self._kept and self._missing is None

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def events(self) -> int:
        with self._lock:
            return sum(len(k.batch.events) for k in self._kept.values())

    # -- under the lock ----------------------------------------------------------------------
    def _remove(self, seq: int, entry: _Kept) -> None:
        del self._kept[seq]
        self._bytes -= entry.size
        if entry.refused:
            self._refused_bytes -= entry.size

    def _evict_refused_over_cap(self) -> int:
        """Drops the oldest refused batches while over the byte cap."""
        evicted = 0
        if self._bytes <= self._max_bytes:
            return evicted
        for seq, entry in list(self._kept.items()):
            if self._bytes <= self._max_bytes:
                break
            if entry.refused:
                self._remove(seq, entry)
                self._account_lost(entry.batch, "unacked_overflow")
                evicted += 1
        return evicted

    def _account_lost(self, old: pb.Batch, reason: str) -> None:
        if old.events:
            self._buffer.count_drop(reason, len(old.events))
        # The lost batch's own gap marker must not vanish with it: its drop counts and its
        # missing range move to the next batch.
        self._buffer.restore_drops(dict(old.gap.dropped_by_reason))
        first, last = old.seq, old.seq
        if old.gap.first_missing_seq:
            first = min(first, old.gap.first_missing_seq)
            last = max(last, old.gap.last_missing_seq)
        if self._missing is not None:
            first, last = min(first, self._missing[0]), max(last, self._missing[1])
        self._missing = (first, last)
        # A gap marker is due even when no new event comes.
        self._buffer.wakeup.set()
