"""One gRPC stream to the agent at a time: the batches sent on it, the answers read from it.

- The channel is opened by `AgentStream.session()`, on the sender thread, in the process that
  sends (never in `register()`, never inherited across fork).
- On a new stream every kept batch is resent first (the agent drops what it already has).
- The agent answers every batch (ack, refusal with a reason, or a stream status). A batch
  refused for a retriable reason (WAL or disk full, shutting down) is kept and retried: one
  probe per `RETRY_REFUSED_S`, all of them once a probe is accepted. One refused for a
  permanent reason (invalid, too big) is dropped at once, its events counted as
  `refused_<reason>` (`refusals.py`) and the batch named by the next gap marker.
- Nothing waits forever: connecting has a deadline, and when a batch has been sent and the
  agent has answered nothing for `ack_timeout_ms` the stream is cancelled (`ack_timeouts`),
  as when it ends with any status; the sender then reconnects with jittered backoff.
  (An agent that answers, only slower than the hook sends, is not cut off: see window.py.)
- Back-pressure: at the unanswered-bytes cap no new batch is made and events wait in the
  buffer (see `sender.py` for what happens when it fills).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, ingest_pb2_grpc
from vllm_hooks.config.env_vars import ENV_MAX_BATCH_BYTES
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.errors import InternalErrors
from vllm_hooks.events.self_timing import SelfTimer
from vllm_hooks.transport import refusals
from vllm_hooks.transport.buffer import EventBuffer
from vllm_hooks.transport.sender_stats import SenderStats
from vllm_hooks.transport.window import Outcome, UnackedWindow

logger = logging.getLogger("vllm_hooks")

_END = object()
#: Seconds between retries of refused batches (one probe batch each time).
RETRY_REFUSED_S = 1.0
#: Deadline for the channel to connect before the session gives up and backs off.
_CONNECT_TIMEOUT_S = 1.0
#: Batches made per flush before the session loop checks its deadlines again.
_MAX_BATCHES_PER_FLUSH = 16


class AgentStream:
    """The sender's connection to the agent. `session()` runs one connection until it fails,
    stalls or the sender stops; what must outlive a connection (the refused batches waiting for
    room, the answers counted, the refusal reasons already logged) is kept on this object."""

    def __init__(
        self,
        settings: HookSettings,
        buffer: EventBuffer,
        window: UnackedWindow,
        stats: SenderStats,
        errors: InternalErrors,
        epoch: int,
        stop: threading.Event,
        make_batch: Callable[[], pb.Batch | None],
        on_config: Callable[[int, int, int], None],
        timer: SelfTimer | None = None,
    ) -> None:
        self._settings = settings
        self._buffer = buffer
        self._window = window
        self._stats = stats
        self._errors = errors
        #: The sender's epoch: an ack naming another one answers another sender.
        self.epoch = epoch
        self._stop = stop
        self._make_batch = make_batch
        self._on_config = on_config
        self._timer = timer
        self._acks = 0
        #: Set by the reader when a retried batch was stored: the agent has room again.
        self._retry_all = threading.Event()
        self._refusals_logged: set[int] = set()

    def session(self, meter: Callable[[], None] | None) -> bool:
        """One connection. Returns True if the agent acknowledged something on it (the
        backoff restarts from its minimum), False if it failed or made no progress. `meter`
        adds the sender thread's CPU time to the self-timing figures (None when off)."""
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
            self._stats.reconnects += 1
            self._stats.connected = True
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
                if meter is not None:
                    meter()
                if self._window.oldest_unanswered_age() > ack_timeout:
                    # The agent took the stream but stopped answering: start over.
                    self._stats.ack_timeouts += 1
                    logger.warning("vllm-audit: no answer from the agent for %.1fs; reconnecting",
                                   ack_timeout)
                    return False
            self._flush_into(outq)
            return self._acks > acks_before
        finally:
            self._stats.connected = False
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
            self._stats.batches_refused += 1
        elif outcome is Outcome.DROPPED:
            self._stats.batches_refused += 1
            self._stats.batches_dropped += 1
            reason = refusals.drop_reason(ack.refusal)
            self._stats.events_refused[reason] = self._stats.events_refused.get(reason, 0) + events
            self._log_refusal(ack)
        elif outcome is Outcome.STORED:
            self._stats.batches_acked += 1
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
            self._stats.stream_ends[status] = self._stats.stream_ends.get(status, 0) + 1
            if status == "RESOURCE_EXHAUSTED" and self._stats.stream_ends[status] == 1:
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
