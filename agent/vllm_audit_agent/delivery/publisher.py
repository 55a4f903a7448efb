"""The record publisher: sends the record log to a sink from a persisted cursor.

One generic loop for both sinks (`kafka_sink`, and `no_kafka` without Kafka). It reads
durable records after the log's cursor (the last seq the sink acknowledged) and keeps up to
`window` sends in flight: overlapping sends let aiokafka batch per partition (awaiting each
send in turn capped a producer at one broker round trip per record, ~140 records/s against
the test broker). Acknowledgements are settled oldest first, so the cursor only ever moves
past a contiguous prefix of acknowledged records; it is persisted atomically (at most every
CURSOR_PERSIST_INTERVAL_S, and at stop). After a crash the records after the persisted cursor
are sent again: at-least-once, de-duplicated downstream on `event_id`.

When the oldest send in flight fails, every failed send in the window is sent again, as
batches, after a jittered exponential backoff that wakes at once on shutdown (broker down,
timeouts, leader changes, refusals such as authorisation: all retried, counted by reason);
sends still pending are left to finish, so a retry does not duplicate them. Only a record
that can never be accepted (too large, invalid) is parked in the dead-letter file
`<data_dir>/records/dead-letter.jsonl` — fsynced before the cursor passes it, counted by
reason — never silently released. (A dead-letter *topic* would refuse a
too-large record just the same, so the file is the one place that always takes it.)

Engine-stats snapshots are offered here too but take their own bounded queue to the same
sink (`engine_stats`), never the record log.

Attributes read by metrics: `connected`, `backlog_records`, `backlog_bytes`,
`oldest_unpublished_age_seconds`, `failures` (by FAILURE_REASONS), `dead_lettered` (by
DEAD_LETTER_REASONS) and `counters` (published, retries, connect_errors, stats_*).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable
from typing import Any

import orjson

from vllm_audit_agent.delivery.ack_check import AckedOffsets
from vllm_audit_agent.delivery.engine_stats import EngineStatsQueue
from vllm_audit_agent.delivery.sink import DEAD_LETTER_REASONS, FAILURE_REASONS, Sink
from vllm_audit_agent.records.entry import Entry
from vllm_audit_agent.records.log import DEAD_LETTER_NAME, RecordLog

logger = logging.getLogger("vllm_audit.agent")

#: Sends in flight at most.
SEND_WINDOW = 8192
#: Seconds between probes of the sink's connection (`connected` turns False within about one).
PROBE_INTERVAL_S = 1.0
CURSOR_PERSIST_INTERVAL_S = 0.2


class Publisher:
    """Sends the record log through `sink` from the log's cursor (see the module docstring)."""

    def __init__(self, sink: Sink, window: int = SEND_WINDOW, max_backoff: float = 5.0,
                 probe_interval: float = PROBE_INTERVAL_S) -> None:
        self.sink = sink
        self.durable = sink.durable
        self.window = window
        self.max_backoff = max_backoff
        self.counters: Counter[str] = Counter({k: 0 for k in (
            "published", "retries", "connect_errors", "unreachable", "broker_lost_acknowledged",
            "republished")})
        self.failures: Counter[str] = Counter({r: 0 for r in FAILURE_REASONS})
        self.dead_lettered: Counter[str] = Counter({r: 0 for r in DEAD_LETTER_REASONS})
        self.log: RecordLog | None = None
        self.probe_interval = probe_interval
        self._connected = False
        #: Set by the connection probe while no broker can be reached (see `_watch`).
        self._unreachable = False
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        # The raw flags, not `connected`: a subclass may report Kafka's state there (no_kafka).
        self.stats = EngineStatsQueue(sink, self.counters, self._stopping,
                                      lambda: self._connected and not self._unreachable,
                                      self._sleep)
        self._oldest_inflight_ms: int | None = None
        #: Offsets the broker gave to acknowledged batches (a broker that gives one again lost
        #: what it had acknowledged there), and the seq to send again after when it did.
        self.acked = AckedOffsets()
        self._rewind: int | None = None
        self._persisted = -1

    # -- attributes for metrics -------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Connected, as far as the last send and the last connection probe know: a failed
        send or an unreachable broker makes it False at once."""
        return self._connected and not self._unreachable

    @property
    def backlog_records(self) -> int:
        return self.log.backlog_records if self.log is not None else 0

    @property
    def backlog_bytes(self) -> int:
        return self.log.unpublished_bytes if self.log is not None else 0

    @property
    def oldest_unpublished_age_seconds(self) -> float:
        if self.log is None or not self.log.backlog_records:
            return 0.0
        oldest = self._oldest_inflight_ms or self.log.oldest_unpublished_ms()
        return max(0.0, time.time() - oldest / 1000) if oldest else 0.0

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self, log: RecordLog) -> None:
        self.log = log
        self._task = asyncio.create_task(self._run(log), name="record-publisher")
        self._stats_task = asyncio.create_task(self.stats.run(), name="stats-publisher")
        self._watch_task = asyncio.create_task(self._watch(), name="publisher-probe")

    async def stop(self, timeout: float) -> int:
        """Publishes what it can within `timeout` (the sink's close included); returns the
        number of records left unpublished (still in the log, after the cursor)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._stopping.set()
        self.stats.wake()
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch_task
        for task in (self._task, self._stats_task):
            if task is None:
                continue
            try:
                await asyncio.wait_for(task, max(0.0, deadline - loop.time() - 0.5))
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        try:
            await self.sink.close(max(0.1, deadline - loop.time()))
        except Exception as exc:
            self.counters["stop_timeouts"] += 1
            logger.warning("sink close failed: %r", exc)
        self._connected = False
        if self.log is None:
            return 0
        await self.log.stop_reading()
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.log.persist_cursor)
        left = self.log.backlog_records
        if left:
            logger.warning("publisher stopped with %d records unpublished (kept in the record "
                           "log after the cursor)", left)
        return left

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds * (0.5 + random.random()))

    async def _watch(self) -> None:
        """Probes the sink's connection every `probe_interval` once connected. Sends alone
        noticed a dead broker late: only when one timed out (request_timeout_ms) or at
        aiokafka's metadata refresh, and never while idle. The probe only clears what it
        set, so a send that failed on a live connection (a hung broker) still counts."""
        while not self._stopping.is_set():
            await self._sleep(self.probe_interval)
            if self._stopping.is_set() or (not self._connected and not self._unreachable):
                continue
            try:
                reachable = await self.sink.probe()
            except Exception as exc:
                if self.sink.classify(exc) is None and not isinstance(exc, OSError):
                    raise
                reachable = False
            if reachable == self._unreachable:
                self._unreachable = not reachable
                if reachable:
                    logger.info("the Kafka broker is reachable again")
                else:
                    self.counters["unreachable"] += 1
                    logger.warning("the Kafka broker is unreachable (no connection could be "
                                   "made); records wait in the record log")

    async def _connect(self) -> bool:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                await self.sink.connect()
                self._connected = True
                return True
            except Exception as exc:
                if self.sink.classify(exc) is None and not isinstance(exc, OSError):
                    raise
                self.counters["connect_errors"] += 1
                logger.warning("sink connect failed (%r); retrying in ~%.1fs", exc, backoff)
                await self._sleep(backoff)
                backoff = min(self.max_backoff, backoff * 2)
        return False

    # -- the cursor loop ----------------------------------------------------------------------
    # One loop, read top to bottom as the cursor's life (connect, read, send, ack, retry, park):
    # split into steps, its retry and shutdown paths would be spread over several methods.
    async def _run(self, log: RecordLog) -> None:  # noqa: C901
        if not await self._connect():
            return
        inflight: deque[tuple[Entry, Awaitable[Any] | BaseException]] = deque()
        last_sent = log.cursor
        acked_bytes = 0
        backoff = 0.1
        last_persist = time.monotonic()
        stop_checked_at = -1  # last_sent when a stop last found records still to publish
        while True:
            if self._rewind is not None:
                last_sent = await self._send_again(log, inflight, last_sent)
            if len(inflight) <= self.window // 2:
                entries = await log.read(last_sent, self.window - len(inflight))
                if entries:
                    sends = await self.sink.send_many(entries)
                    inflight.extend(zip(entries, sends, strict=True))
                    last_sent = entries[-1].seq
            if not inflight:
                if acked_bytes:
                    log.acknowledged(log.cursor, acked_bytes)
                    acked_bytes = 0
                if log.cursor != self._persisted:
                    await self._persist(log)
                if self._stopping.is_set():
                    # A record may have become durable while this loop awaited (the record
                    # log's final checkpoint is written just before the stop, often while the
                    # cursor's write is on its thread): publish it first, as long as reading
                    # makes progress.
                    if log.durable_seq > last_sent and last_sent != stop_checked_at:
                        stop_checked_at = last_sent
                        continue
                    return
                waiter = asyncio.ensure_future(log.wait_durable(last_sent, 1.0))
                stopper = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                continue
            entry, sent = inflight[0]
            self._oldest_inflight_ms = entry.time_ms
            error = await self._outcome(sent)
            if error is not None:
                reason = self.sink.classify(error) or "retriable"
                self.failures[reason] += 1
                if reason not in DEAD_LETTER_REASONS:
                    if not await self._retry(inflight, entry, reason, error, backoff):
                        return  # shutdown: the cursor stays before this record
                    backoff = min(self.max_backoff, backoff * 2)
                    continue
                if not await self._dead_letter(entry, reason, error):
                    return
            else:
                self._connected = True
                backoff = 0.1
                # The records of one broker batch share its future: those after this one
                # are acknowledged with it (one await per batch, not per record).
                same = 1
                while same < len(inflight) and inflight[same][1] is sent:
                    same += 1
                for _ in range(same - 1):
                    acked_bytes += len(inflight.popleft()[0].value)
                entry = inflight[0][0]
                self.counters["published"] += same
                if isinstance(sent, asyncio.Future):
                    self._check_ack(sent.result(), entry.seq)
            inflight.popleft()
            acked_bytes += len(entry.value)
            log.cursor = entry.seq  # contiguous prefix acknowledged
            self._oldest_inflight_ms = None
            if time.monotonic() - last_persist >= CURSOR_PERSIST_INTERVAL_S:
                log.acknowledged(entry.seq, acked_bytes)
                acked_bytes = 0
                await self._persist(log)
                last_persist = time.monotonic()

    def _check_ack(self, metadata: Any, seq: int) -> None:
        rewind = self.acked.note(metadata, seq)
        if rewind is not None:
            self.counters["broker_lost_acknowledged"] += 1
            self._rewind = rewind if self._rewind is None else min(self._rewind, rewind)
            logger.error("the Kafka broker lost records it had acknowledged (partition %s:%s "
                         "gave offset %s again): sending again from the record log after seq %d",
                         getattr(metadata, "topic", "?"), getattr(metadata, "partition", "?"),
                         getattr(metadata, "offset", "?"), rewind)

    async def _send_again(self, log: RecordLog,
                          inflight: deque[tuple[Entry, Awaitable[Any] | BaseException]],
                          last_sent: int) -> int:
        """Moves the cursor back to `_rewind`: every record after it is sent again from the
        record log (the source of truth; at-least-once, de-duplicated on `event_id`). Sends in
        flight are forgotten (their records are among those sent again)."""
        rewind, self._rewind = self._rewind, None
        assert rewind is not None
        self.counters["republished"] += max(0, last_sent - rewind)
        inflight.clear()
        log.cursor = min(log.cursor, rewind)
        await self._persist(log)
        return min(last_sent, rewind)

    async def _persist(self, log: RecordLog) -> None:
        cursor = log.cursor
        try:
            await asyncio.to_thread(log.persist_cursor)
            self._persisted = cursor
        except OSError as exc:
            self.counters["cursor_write_errors"] += 1
            logger.warning("could not persist the publish cursor: %r", exc)

    async def _outcome(self, sent: Awaitable[Any] | BaseException) -> BaseException | None:
        """The send's error (a sink error), or None once the broker acknowledged it."""
        if isinstance(sent, BaseException):
            return sent
        try:
            await sent
        except Exception as exc:
            if self.sink.classify(exc) is None:
                raise
            return exc
        return None

    async def _retry(self, inflight: deque[tuple[Entry, Awaitable[Any] | BaseException]],
                     entry: Entry, reason: str, error: BaseException, backoff: float) -> bool:
        """After a backoff, sends again every in-flight record whose send failed (as
        batches; those still pending or acknowledged are kept, so nothing is sent twice by
        this). Returns False if shutdown came first."""
        self._connected = False
        self.counters["retries"] += 1
        if self._stopping.is_set():
            return False
        logger.warning("publishing seq %d failed (%s: %r); retrying in ~%.1fs",
                       entry.seq, reason, error, backoff)
        await self._sleep(backoff)
        if self._stopping.is_set():
            return False
        failed = [i for i, (_, sent) in enumerate(inflight) if _failed(sent)]
        sends = await self.sink.send_many([inflight[i][0] for i in failed])
        for i, again in zip(failed, sends, strict=True):
            inflight[i] = (inflight[i][0], again)
        return True

    async def _dead_letter(self, entry: Entry, reason: str, exc: BaseException) -> bool:
        assert self.log is not None
        line = orjson.dumps({
            "seq": entry.seq, "topic": entry.topic, "key": entry.key.decode(errors="replace"),
            "reason": reason, "error": repr(exc), "dead_lettered_unix_ms": int(time.time() * 1000),
            "record": entry.value.decode(),
        }) + b"\n"
        path = self.log.directory / DEAD_LETTER_NAME

        def write() -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

        while True:
            try:
                await asyncio.to_thread(write)
                break
            except OSError as wexc:
                # Without the dead-letter write the record is not settled: retry, never skip.
                self.counters["dead_letter_write_errors"] += 1
                logger.error("dead-letter write failed: %r", wexc)
                if self._stopping.is_set():
                    return False
                await self._sleep(1.0)
        self.dead_lettered[reason] += 1
        logger.error("record seq %d dead-lettered (%s): %r", entry.seq, reason, exc)
        return True

    # -- engine stats: not chained, best effort, counted (engine_stats.py) -------------------
    def offer_stats(self, topic_suffix: str, key: str, record: dict[str, Any]) -> None:
        self.stats.offer(topic_suffix, key, record)


def _failed(sent: Awaitable[Any] | BaseException) -> bool:
    if isinstance(sent, BaseException):
        return True
    if isinstance(sent, asyncio.Future) and sent.done():
        return sent.cancelled() or sent.exception() is not None
    return False
