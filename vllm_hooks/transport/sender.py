"""The sender thread: batches buffered events and hands them to the agent stream (`stream.py`).

- Every batch carries `(source_id, epoch, seq)`; the epoch is random per Sender, so a restarted
  process or a second one reusing a source id is never taken for a duplicate. A batch is kept
  until the agent acknowledges it (after its WAL append) and is resent after a reconnect; the
  agent drops duplicates. How the stream is opened, answered, retried and timed out is
  `stream.py`'s; this module runs it from its own thread, reconnecting with jittered backoff.
- Batches are cut by count and by bytes (`batching.py`), so none exceeds the per-batch byte
  cap; an event too big for any batch is truncated and marked (`Event.truncated`).
- Kept batches live in an `UnackedWindow` (`window.py`), bounded by bytes; only refused ones
  are dropped past the cap (`unacked_overflow`). Unanswered batches are bounded by
  back-pressure instead: at the cap no new batch is made, events wait in the buffer, and when
  it fills new events are dropped and counted (`buffer_full`), as while the agent is
  unreachable. vLLM never waits on any of this.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable

from vllm_audit.v1 import events_pb2 as pb
from vllm_hooks.config.gpu_identity import visible_gpu_uuids
from vllm_hooks.config.instance_key import instance_key, instance_tag
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.errors import InternalErrors
from vllm_hooks.events.raw_events import EventConverter
from vllm_hooks.events.self_timing import SelfTimer
from vllm_hooks.transport.batching import BatchFiller
from vllm_hooks.transport.buffer import EventBuffer
from vllm_hooks.transport.sender_stats import SenderStats
from vllm_hooks.transport.stream import AgentStream
from vllm_hooks.transport.window import UnackedWindow

logger = logging.getLogger("vllm_hooks")

_MAX_BACKOFF_S = 5.0
#: Seconds between batches made only to report changed self-timing figures.
TIMING_REPORT_S = 0.25


def new_epoch() -> int:
    """A random non-zero 63-bit epoch (fits int64 readers of the uint64 field)."""
    epoch = 0
    while not epoch:
        epoch = secrets.randbits(63)
    return epoch


class Sender:
    def __init__(
        self,
        settings: HookSettings,
        buffer: EventBuffer,
        converter: EventConverter,
        errors: InternalErrors,
        on_config: Callable[[int, int, int], None],
        role: str,
        model: str = "",
        timer: SelfTimer | None = None,
    ) -> None:
        self._settings = settings
        self._buffer = buffer
        self._errors = errors
        self.role = role
        self.model = model
        #: Reported in every batch (a reconnect reaches a restarted agent with it too).
        self.gpu_uuids = visible_gpu_uuids(os.environ)
        self.source_id = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        #: Which vLLM launch this process belongs to (instance_key.py): who may read back.
        self.instance_tag = instance_tag(instance_key())
        self.stats = SenderStats()
        #: VLLM_AUDIT_SELF_TIMING: cumulative figures on every batch, and a batch of their own
        #: at most every TIMING_REPORT_S when nothing else is sent.
        self._timer = timer
        self._timing_reported: tuple[int, ...] = ()
        self._timing_reported_at = 0.0
        self._filler = BatchFiller(buffer, converter, errors, settings.batch_events,
                                   settings.max_batch_bytes)
        self._seq = 0
        self._window = UnackedWindow(settings.unacked_bytes, buffer)
        #: Held while a batch is made, so flush() never sees events half-way there.
        self._batch_lock = threading.Lock()
        self._errors_reported: dict[str, int] = {}
        self._stop = threading.Event()
        self._stream = AgentStream(settings, buffer, self._window, self.stats, errors, new_epoch(),
                                   self._stop, self._make_batch, on_config, timer)
        self._thread = threading.Thread(target=self._run, name="vllm-audit-sender", daemon=True)
        self._started = False
        #: (level, config epoch, config version) the process runs, set by the runtime when it
        #: applies a pushed config; stamped on every batch. A change makes a batch even with
        #: no events, so an idle hook reports a new level too.
        self.applied_config: tuple[int, int, int] = (0, 0, 0)
        self._reported_config: tuple[int, int, int] = (0, 0, 0)

    @property
    def epoch(self) -> int:
        """Random per Sender; the stream holds it (it tells our acks from another sender's)."""
        return self._stream.epoch

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Waits until every buffered event is acknowledged. Returns False on timeout."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            # Under the batch lock, events are in the buffer, the carry or a kept batch, never
            # in between (drained and being converted).
            if not self._batch_lock.acquire(timeout=remaining):
                return False
            try:
                if not self._filler.waiting() and self._window.all_answered():
                    return True
            finally:
                self._batch_lock.release()
            self._buffer.wakeup.set()
            time.sleep(0.005)
        return False

    def close(self, timeout: float) -> dict[str, int]:
        """Flushes within `timeout`, stops the thread and reports what was not delivered."""
        if self._started and not self._stop.is_set():
            self.flush(timeout)
        self._stop.set()
        self._buffer.wakeup.set()
        if self._started:
            self._thread.join(timeout=max(0.1, timeout))
        lost = {"buffered": len(self._buffer) + self._filler.pending(),
                "unacked": self._window.events()}
        if any(lost.values()):
            logger.warning("vllm-audit: shutdown left events undelivered: %s", lost)
        return lost

    def unacked_batches(self) -> int:
        return len(self._window)

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.05
        # Adds this thread's CPU time to the timer (made here: the meter is per thread).
        meter = self._timer.cpu_meter() if self._timer is not None else None
        while not self._stop.is_set():
            try:
                if self._stream.session(meter):
                    backoff = 0.05
            except Exception as exc:
                self._errors.record("sender.session", exc)
            if self._stop.is_set():
                break
            # Jittered exponential backoff; wakes at once on shutdown.
            self._stop.wait(backoff * (0.5 + random.random()))
            backoff = min(_MAX_BACKOFF_S, backoff * 2)

    # -- making batches ---------------------------------------------------------------------
    def _timing_due(self) -> bool:
        """Self-timing changed and was last reported TIMING_REPORT_S ago: worth a batch."""
        timer = self._timer
        return (timer is not None and timer.snapshot() != self._timing_reported
                and time.monotonic() - self._timing_reported_at >= TIMING_REPORT_S)

    def _new_internal_errors(self) -> dict[str, int]:
        """Swallowed hook errors since the last batch, so the agent shows them too."""
        now = self._errors.snapshot()
        delta = {
            f"internal_error.{site}": n - self._errors_reported.get(site, 0)
            for site, n in now.items()
            if n != self._errors_reported.get(site, 0)
        }
        self._errors_reported = now
        return delta

    def _make_batch(self) -> pb.Batch | None:
        with self._batch_lock:
            return self._make_batch_locked()

    def _make_batch_locked(self) -> pb.Batch | None:
        # The missing range first, then the drop counts: a lost batch's events are counted
        # before its range is set, so a range taken here comes with its counts.
        missing = self._window.take_missing()
        drops = self._buffer.take_drops()
        drops.update(self._new_internal_errors())
        applied = self.applied_config
        timing = self._timing_due()
        reported: tuple[int, ...] = ()
        batch = pb.Batch(
            source_id=self.source_id,
            epoch=self.epoch,
            seq=self._seq + 1,
            process_role=self.role,
            pid=os.getpid(),
            model=self.model,
            # the ignore[arg-type] below: an int for a contract enum (stubs want its ValueType)
            applied_level=applied[0],  # type: ignore[arg-type]
            config_epoch=applied[1],
            config_version=applied[2],
            gpu_uuids=self.gpu_uuids,
            instance_tag=self.instance_tag,
        )
        for reason, n in drops.items():
            batch.gap.dropped_by_reason[reason] = n
        if missing is not None:
            batch.gap.first_missing_seq, batch.gap.last_missing_seq = missing
        if self._timer is not None:
            # Before the events, so the byte budget counts it.
            self._timer.fill(batch.self_timing)
            reported = self._timer.snapshot()
        size = self._filler.fill(batch)
        self.stats.events_truncated = self._filler.events_truncated
        if (not batch.events and not batch.gap.dropped_by_reason and missing is None
                and applied == self._reported_config and not timing):
            return None
        if self._timer is not None:
            self._timing_reported = reported
            self._timing_reported_at = time.monotonic()
        # A new applied config makes a batch on its own: an idle hook reports it too.
        self._reported_config = applied
        self._seq += 1
        self.stats.batches_sent += 1
        self.stats.events_sent += len(batch.events)
        self.stats.batches_dropped += self._window.add(batch, size)
        return batch
