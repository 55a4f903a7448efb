"""The sender thread: batches buffered events and streams them to the agent over gRPC.

- The channel is opened lazily in this thread, in the process that sends (never in
  `register()`, never inherited across fork).
- Every batch carries `(source_id, seq)`. It stays in `_unacked` until the agent acknowledges
  it (after its WAL append) and is resent after a reconnect; the agent drops duplicates.
- The agent answers every batch. A *refused* batch (its WAL is full) is kept and retried: one
  probe per `RETRY_REFUSED_S`, all of them once a probe is accepted.
- `_unacked` is bounded by bytes. Only refused batches are dropped past the cap (the oldest
  first), counted (`unacked_overflow`) and named by the next batch's gap marker: a batch the
  agent has not answered yet may already be stored, so dropping it could count a loss that
  did not happen. Unanswered batches are bounded by back-pressure instead: at the cap no new
  batch is made, events wait in the buffer, and when it fills new events are dropped and
  counted (`buffer_full`), as while the agent is unreachable. vLLM never waits on any of this.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, ingest_pb2_grpc

from .buffer import EventBuffer
from .errors import InternalErrors
from .raw_events import EventConverter
from .settings import HookSettings

logger = logging.getLogger("vllm_hooks")

_END = object()
_MAX_BACKOFF_S = 5.0
#: Seconds between retries of refused batches (one probe batch each time).
RETRY_REFUSED_S = 1.0


@dataclass
class _Unacked:
    batch: pb.Batch
    size: int
    #: The agent answered "not stored"; only such batches may be dropped under the cap.
    refused: bool = False


@dataclass
class SenderStats:
    batches_sent: int = 0
    batches_acked: int = 0
    batches_refused: int = 0
    batches_dropped: int = 0
    events_sent: int = 0
    reconnects: int = 0
    connected: bool = False


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
    ) -> None:
        self._settings = settings
        self._buffer = buffer
        self._converter = converter
        self._errors = errors
        self._on_config = on_config
        self.role = role
        self.model = model
        self.source_id = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        self.stats = SenderStats()
        self._seq = 0
        self._unacked: OrderedDict[int, _Unacked] = OrderedDict()
        self._unacked_bytes = 0
        self._refused_bytes = 0
        #: Set by the reader when a retried batch was stored: the agent has room again.
        self._retry_all = threading.Event()
        self._unacked_lock = threading.Lock()
        self._missing: tuple[int, int] | None = None
        self._errors_reported: dict[str, int] = {}
        self._stop = threading.Event()
        self._idle = threading.Event()
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
        while time.monotonic() < deadline:
            if len(self._buffer) == 0 and self.unacked_batches() == 0:
                return True
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
        with self._unacked_lock:
            unacked_events = sum(len(u.batch.events) for u in self._unacked.values())
        lost = {"buffered": len(self._buffer), "unacked": unacked_events}
        if any(lost.values()):
            logger.warning("vllm-audit: shutdown left events undelivered: %s", lost)
        return lost

    def unacked_batches(self) -> int:
        with self._unacked_lock:
            return len(self._unacked)

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.05
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
        """One connection. Returns True if it was established."""
        channel = grpc.insecure_channel(
            self._settings.grpc_target(),
            options=[("grpc.keepalive_time_ms", 10000), ("grpc.enable_retries", 0)],
        )
        outq: queue.SimpleQueue[object] = queue.SimpleQueue()
        responses = None
        try:
            try:
                grpc.channel_ready_future(channel).result(timeout=1.0)
            except grpc.FutureTimeoutError:
                return False
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            responses = stub.Stream(self._requests(outq))
            reader = threading.Thread(
                target=self._read, args=(responses,), name="vllm-audit-acks", daemon=True
            )
            reader.start()
            self.stats.reconnects += 1
            self.stats.connected = True
            # A new stream: everything kept is resent (the agent drops what it already has).
            self._resend(outq, self._take_for_resend(refused_only=False))
            interval = self._settings.flush_ms / 1000.0
            next_retry = time.monotonic() + RETRY_REFUSED_S
            while not self._stop.is_set() and reader.is_alive():
                self._buffer.wakeup.wait(interval)
                self._buffer.wakeup.clear()
                if self._retry_all.is_set():
                    self._retry_all.clear()
                    self._resend(outq, self._take_for_resend(refused_only=True))
                elif time.monotonic() >= next_retry:
                    next_retry = time.monotonic() + RETRY_REFUSED_S
                    self._resend(outq, self._take_for_resend(refused_only=True, limit=1))
                self._flush_into(outq)
            self._flush_into(outq)
            return True
        finally:
            self.stats.connected = False
            outq.put(_END)
            if responses is not None:
                responses.cancel()
            channel.close()

    @staticmethod
    def _requests(outq: queue.SimpleQueue[object]) -> Iterator[pb.Batch]:
        while True:
            item = outq.get()
            if item is _END:
                return
            assert isinstance(item, pb.Batch)
            yield item

    def _take_for_resend(self, refused_only: bool, limit: int | None = None) -> list[pb.Batch]:
        """Marks kept batches as unanswered again (oldest first) and returns them to send."""
        out: list[pb.Batch] = []
        with self._unacked_lock:
            for entry in self._unacked.values():
                if limit is not None and len(out) >= limit:
                    break
                if refused_only and not entry.refused:
                    continue
                if entry.refused:
                    entry.refused = False
                    self._refused_bytes -= entry.size
                out.append(entry.batch)
        return out

    @staticmethod
    def _resend(outq: queue.SimpleQueue[object], batches: list[pb.Batch]) -> None:
        for batch in batches:
            outq.put(batch)

    def _on_ack(self, ack: ingest_pb2.Ack) -> None:
        with self._unacked_lock:
            entry = self._unacked.get(ack.seq)
            if entry is None:
                return
            if ack.refused:
                if not entry.refused:
                    entry.refused = True
                    self._refused_bytes += entry.size
                self.stats.batches_refused += 1
                return
            del self._unacked[ack.seq]
            self._unacked_bytes -= entry.size
            if entry.refused:
                self._refused_bytes -= entry.size
            had_refused = self._refused_bytes > 0
        self.stats.batches_acked += 1
        if had_refused:
            # Stored after all: the agent has room again, so send the rest of what it refused.
            self._retry_all.set()

    def _read(self, responses: Iterator[ingest_pb2.IngestReply]) -> None:
        try:
            for reply in responses:
                which = reply.WhichOneof("body")
                if which == "ack":
                    self._on_ack(reply.ack)
                elif which == "config":
                    self._on_config(reply.config.level, reply.config.version, reply.config.epoch)
        except grpc.RpcError:
            pass  # the session loop notices the dead reader and reconnects
        except Exception as exc:
            self._errors.record("sender.read", exc)

    def _unanswered_bytes(self) -> int:
        with self._unacked_lock:
            return self._unacked_bytes - self._refused_bytes

    def _flush_into(self, outq: queue.SimpleQueue[object]) -> None:
        while True:
            if self._unanswered_bytes() >= self._settings.unacked_bytes:
                return  # back-pressure: events wait in the bounded buffer
            events = self._buffer.drain(self._settings.batch_events)
            batch = self._make_batch(events)
            if batch is None:
                return
            outq.put(batch)
            if len(events) < self._settings.batch_events:
                return

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

    def _make_batch(self, raw_events: list[tuple[object, ...]]) -> pb.Batch | None:
        drops = self._buffer.take_drops()
        drops.update(self._new_internal_errors())
        missing = self._missing
        applied = self.applied_config
        if not raw_events and not drops and missing is None and applied == self._reported_config:
            return None
        self._reported_config = applied
        self._seq += 1
        batch = pb.Batch(
            source_id=self.source_id,
            seq=self._seq,
            process_role=self.role,
            pid=os.getpid(),
            model=self.model,
            applied_level=applied[0],  # type: ignore[arg-type]
            config_epoch=applied[1],
            config_version=applied[2],
        )
        convert = self._converter.to_proto
        append = batch.events.append
        for raw in raw_events:
            try:
                append(convert(raw))
            except Exception as exc:
                self._errors.record("sender.convert", exc)
                drops["convert_error"] = drops.get("convert_error", 0) + 1
        if drops:
            for reason, n in drops.items():
                batch.gap.dropped_by_reason[reason] = n
        if missing is not None:
            batch.gap.first_missing_seq, batch.gap.last_missing_seq = missing
            self._missing = None
        size = batch.ByteSize()
        self.stats.batches_sent += 1
        self.stats.events_sent += len(batch.events)
        with self._unacked_lock:
            self._unacked[batch.seq] = _Unacked(batch, size)
            self._unacked_bytes += size
            evicted = self._evict_refused_over_cap()
        for old in evicted:
            self._account_lost_batch(old)
        return batch

    def _evict_refused_over_cap(self) -> list[pb.Batch]:
        """Drops the oldest refused batches while over the byte cap (caller holds the lock)."""
        if self._unacked_bytes <= self._settings.unacked_bytes:
            return []
        evicted: list[pb.Batch] = []
        for seq, entry in list(self._unacked.items()):
            if self._unacked_bytes <= self._settings.unacked_bytes:
                break
            if entry.refused:
                del self._unacked[seq]
                self._unacked_bytes -= entry.size
                self._refused_bytes -= entry.size
                evicted.append(entry.batch)
        return evicted

    def _account_lost_batch(self, old: pb.Batch) -> None:
        self.stats.batches_dropped += 1
        if old.events:
            self._buffer.count_drop("unacked_overflow", len(old.events))
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
