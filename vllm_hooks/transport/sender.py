"""The sender thread: batches buffered events and streams them to the agent over gRPC.

- The channel is opened lazily in this thread, in the process that sends (never in
  `register()`, never inherited across fork).
- Every batch carries `(source_id, epoch, seq)`; the epoch is random per Sender, so a restarted
  process or a second one reusing a source id is never taken for a duplicate. A batch is kept
  until the agent acknowledges it (after its WAL append) and is resent after a reconnect; the
  agent drops duplicates.
- The agent answers every batch (ack, refusal with a reason, or a stream status). A batch
  refused for a retriable reason (WAL or disk full, shutting down) is kept and retried: one
  probe per `RETRY_REFUSED_S`, all of them once a probe is accepted. One refused for a
  permanent reason (invalid, too big) is dropped at once, its events counted as
  `refused_<reason>` (`refusals.py`) and the batch named by the next gap marker.
- Nothing waits forever: connecting has a deadline, and when a batch has been sent and the
  agent has answered nothing for `ack_timeout_ms` the stream is cancelled (`ack_timeouts`),
  as when it ends with any status; the sender reconnects with jittered backoff and resends.
  (An agent that answers, only slower than the hook sends, is not cut off: see window.py.)
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
import queue
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, ingest_pb2_grpc
from vllm_hooks.config.gpu_identity import visible_gpu_uuids
from vllm_hooks.config.settings import ENV_MAX_BATCH_BYTES, HookSettings
from vllm_hooks.errors import InternalErrors
from vllm_hooks.events.raw_events import EventConverter
from vllm_hooks.events.self_timing import SelfTimer
from vllm_hooks.transport import refusals
from vllm_hooks.transport.batching import BatchFiller
from vllm_hooks.transport.buffer import EventBuffer
from vllm_hooks.transport.window import Outcome, UnackedWindow

logger = logging.getLogger("vllm_hooks")

_END = object()
_MAX_BACKOFF_S = 5.0
#: Seconds between retries of refused batches (one probe batch each time).
RETRY_REFUSED_S = 1.0
#: Deadline for the channel to connect before the session gives up and backs off.
_CONNECT_TIMEOUT_S = 1.0
#: Seconds between batches made only to report changed self-timing figures.
TIMING_REPORT_S = 0.25
#: Batches made per flush before the session loop checks its deadlines again.
_MAX_BATCHES_PER_FLUSH = 16


@dataclass
class SenderStats:
    batches_sent: int = 0
    batches_acked: int = 0
    #: Refusals of any reason; the permanent ones also count in `batches_dropped`.
    batches_refused: int = 0
    #: Batches given up: refused-and-kept past the byte cap, or refused permanently.
    batches_dropped: int = 0
    events_sent: int = 0
    #: Events of batches refused for a permanent reason, by drop reason (also in the gap
    #: marker that follows); born at 0 for every permanent reason.
    events_refused: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(refusals.PERMANENT_DROP_REASONS, 0))
    #: Events cut to fit the per-batch byte cap and sent marked `truncated` (not a drop).
    events_truncated: int = 0
    reconnects: int = 0
    #: Streams cancelled because the oldest unanswered batch passed `ack_timeout_ms`.
    ack_timeouts: int = 0
    #: Streams the agent side ended, by gRPC status name ("OK" for a clean end).
    stream_ends: dict[str, int] = field(default_factory=dict)
    connected: bool = False


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
        self._on_config = on_config
        self.role = role
        self.model = model
        #: Reported in every batch (a reconnect reaches a restarted agent with it too).
        self.gpu_uuids = visible_gpu_uuids(os.environ)
        self.source_id = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        self.epoch = new_epoch()
        self.stats = SenderStats()
        #: VLLM_AUDIT_SELF_TIMING: cumulative figures on every batch, and a batch of their own
        #: at most every TIMING_REPORT_S when nothing else is sent.
        self._timer = timer
        self._timing_reported: tuple[int, ...] = ()
        self._timing_reported_at = 0.0
        #: Adds this thread's CPU time to the timer (made on the sender thread).
        self._meter: Callable[[], None] | None = None
        self._filler = BatchFiller(buffer, converter, errors, settings.batch_events,
                                   settings.max_batch_bytes)
        self._seq = 0
        self._window = UnackedWindow(settings.unacked_bytes, buffer)
        self._acks = 0
        #: Set by the reader when a retried batch was stored: the agent has room again.
        self._retry_all = threading.Event()
        #: Held while a batch is made, so flush() never sees events half-way there.
        self._batch_lock = threading.Lock()
        self._errors_reported: dict[str, int] = {}
        self._refusals_logged: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vllm-audit-sender", daemon=True)
        self._started = False
        #: (level, config epoch, config version) the process runs, set by the runtime when it
        #: applies a pushed config; stamped on every batch. A change makes a batch even with
        #: no events, so an idle hook reports a new level too.
        self.applied_config: tuple[int, int, int] = (0, 0, 0)
        self._reported_config: tuple[int, int, int] = (0, 0, 0)

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
        if self._timer is not None:
            self._meter = self._timer.cpu_meter()
        while not self._stop.is_set():
            try:
                if self._session():
                    backoff = 0.05
            except Exception as exc:
                self._errors.record("sender.session", exc)
            if self._stop.is_set():
                break
            # Jittered exponential backoff; wakes at once on shutdown.
            self._stop.wait(backoff * (0.5 + random.random()))
            backoff = min(_MAX_BACKOFF_S, backoff * 2)

    def _session(self) -> bool:
        """One connection. Returns True if the agent acknowledged something on it (the
        backoff restarts from its minimum), False if it failed or made no progress."""
        limit = self._settings.max_message_bytes
        channel = grpc.insecure_channel(
            self._settings.grpc_target(),
            options=[("grpc.keepalive_time_ms", 10000), ("grpc.enable_retries", 0),
                     ("grpc.max_send_message_length", limit),
                     ("grpc.max_receive_message_length", limit)],
        )
        outq: queue.SimpleQueue[object] = queue.SimpleQueue()
        responses = None
        cancelling = threading.Event()
        acks_before = self._acks
        try:
            try:
                grpc.channel_ready_future(channel).result(timeout=_CONNECT_TIMEOUT_S)
            except grpc.FutureTimeoutError:
                return False
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            responses = stub.Stream(self._requests(outq))
            reader = threading.Thread(
                target=self._read, args=(responses, cancelling), name="vllm-audit-acks",
                daemon=True,
            )
            reader.start()
            self.stats.reconnects += 1
            self.stats.connected = True
            # A new stream: everything kept is resent (the agent drops what it already has).
            self._resend(outq, self._window.take_for_resend(refused_only=False, restart=True))
            interval = self._settings.flush_ms / 1000.0
            ack_timeout = self._settings.ack_timeout_ms / 1000.0
            next_retry = time.monotonic() + RETRY_REFUSED_S
            while not self._stop.is_set() and reader.is_alive():
                self._buffer.wakeup.wait(interval)
                self._buffer.wakeup.clear()
                if self._retry_all.is_set():
                    self._retry_all.clear()
                    self._resend(outq, self._window.take_for_resend(refused_only=True))
                elif time.monotonic() >= next_retry:
                    next_retry = time.monotonic() + RETRY_REFUSED_S
                    self._resend(outq, self._window.take_for_resend(refused_only=True, limit=1))
                self._flush_into(outq)
                if self._meter is not None:
                    self._meter()
                if self._window.oldest_unanswered_age() > ack_timeout:
                    # The agent took the stream but stopped answering: start over.
                    self.stats.ack_timeouts += 1
                    logger.warning("vllm-audit: no answer from the agent for %.1fs; reconnecting",
                                   ack_timeout)
                    return False
            self._flush_into(outq)
            return self._acks > acks_before
        finally:
            self.stats.connected = False
            cancelling.set()
            outq.put(_END)
            if responses is not None:
                responses.cancel()
            channel.close()

    def _requests(self, outq: queue.SimpleQueue[object]) -> Iterator[pb.Batch]:
        # Runs on gRPC's request-iterator thread, which also serialises what it yields.
        meter = self._timer.cpu_meter() if self._timer is not None else None
        while True:
            item = outq.get()
            if meter is not None:
                meter()
            if item is _END:
                return
            assert isinstance(item, pb.Batch)
            yield item

    @staticmethod
    def _resend(outq: queue.SimpleQueue[object], batches: list[pb.Batch]) -> None:
        for batch in batches:
            outq.put(batch)

    def _on_ack(self, ack: ingest_pb2.Ack) -> None:
        if ack.epoch and ack.epoch != self.epoch:
            return  # an answer to another sender that used our source id
        self._acks += 1
        outcome, events = self._window.answer(ack.seq, ack.refused, ack.refusal)
        if outcome is Outcome.KEPT:
            self.stats.batches_refused += 1
        elif outcome is Outcome.DROPPED:
            self.stats.batches_refused += 1
            self.stats.batches_dropped += 1
            reason = refusals.drop_reason(ack.refusal)
            self.stats.events_refused[reason] = self.stats.events_refused.get(reason, 0) + events
            self._log_refusal(ack)
        elif outcome is Outcome.STORED:
            self.stats.batches_acked += 1
            if self._window.has_refused():
                # Stored after all: the agent has room again, so send the rest it refused.
                self._retry_all.set()

    def _log_refusal(self, ack: ingest_pb2.Ack) -> None:
        if ack.refusal not in self._refusals_logged:
            # Once per reason: a log line per batch could flood vLLM's log.
            self._refusals_logged.add(ack.refusal)
            logger.warning("vllm-audit: the agent refused batch %d (%s): %s; dropped and counted",
                           ack.seq, refusals.drop_reason(ack.refusal), ack.reason)

    def _read(self, responses: Iterator[ingest_pb2.IngestReply],
              cancelling: threading.Event) -> None:
        status = "OK"
        meter = self._timer.cpu_meter() if self._timer is not None else None
        try:
            for reply in responses:
                if meter is not None:
                    meter()
                which = reply.WhichOneof("body")
                if which == "ack":
                    self._on_ack(reply.ack)
                elif which == "config":
                    self._on_config(reply.config.level, reply.config.version, reply.config.epoch)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            status = code.name if code is not None else "UNKNOWN"
        except Exception as exc:
            self._errors.record("sender.read", exc)
        # The session loop notices the dead reader and reconnects. A cancel of our own
        # (deadline, shutdown) is not the agent ending the stream.
        if not cancelling.is_set():
            self.stats.stream_ends[status] = self.stats.stream_ends.get(status, 0) + 1
            if status == "RESOURCE_EXHAUSTED" and self.stats.stream_ends[status] == 1:
                # The agent's transport limit is below this hook's batches: a configuration
                # error no resend can fix, so say which settings must agree.
                logger.error("vllm-audit: the agent ended the stream with RESOURCE_EXHAUSTED; "
                             "its max message size must exceed %s=%d",
                             ENV_MAX_BATCH_BYTES, self._settings.max_batch_bytes)

    def _flush_into(self, outq: queue.SimpleQueue[object]) -> None:
        for _ in range(_MAX_BATCHES_PER_FLUSH):
            if self._window.unanswered_bytes() >= self._settings.unacked_bytes:
                return  # back-pressure: events wait in the bounded buffer
            batch = self._make_batch()
            if batch is None:
                return
            outq.put(batch)
        # More is waiting: come back at once, after the session loop checked its deadlines.
        self._buffer.wakeup.set()

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
            applied_level=applied[0],  # type: ignore[arg-type]
            config_epoch=applied[1],
            config_version=applied[2],
            gpu_uuids=self.gpu_uuids,
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
