"""Publishing the record log from a cursor: one generic loop, a Kafka and an in-memory sink.

The loop reads durable records after the log's cursor (the last seq the sink acknowledged)
and keeps up to `window` sends in flight: overlapping sends let aiokafka batch per partition
(awaiting each send in turn capped a producer at one broker round trip per record, ~140
records/s against the test broker). Acknowledgements are settled oldest first, so the cursor
only ever moves past a contiguous prefix of acknowledged records; it is persisted atomically
(at most every CURSOR_PERSIST_INTERVAL_S, and at stop). After a crash the records after the
persisted cursor are sent again: at-least-once, de-duplicated downstream on `event_id`.

When the oldest send in flight fails, every failed send in the window is sent again, as
batches, after a jittered exponential backoff that wakes at once on shutdown (broker down,
timeouts, leader changes, refusals such as authorisation: all retried, counted by reason);
sends still pending are left to finish, so a retry does not duplicate them. Only a record
that can never be accepted (too large, invalid) is parked in the dead-letter file
`<data_dir>/records/dead-letter.jsonl` — fsynced before the cursor passes it, counted by
reason — never silently released. (A dead-letter *topic* would refuse a
too-large record just the same, so the file is the one place that always takes it.)

Engine-stats snapshots are not audit records: they bypass the record log and go through a
small bounded queue straight to `<prefix>.engine-stats` (full queue: the newest snapshot is
dropped, counted as `stats_dropped_queue_full`; a failed send is counted as `stats_failed`).

Idempotent producers and transactions are not used: not every Kafka-compatible broker has
them; records carry `event_id` instead.

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
from typing import Any, Protocol

import orjson

from vllm_audit_agent.delivery.kafka_partition import partitions_for_keys
from vllm_audit_agent.records.log import DEAD_LETTER_NAME, TOPICS, Entry, RecordLog

logger = logging.getLogger("vllm_audit.agent")

#: Sends in flight at most.
SEND_WINDOW = 8192
CURSOR_PERSIST_INTERVAL_S = 0.2
#: Why a send failed (each retried, except the dead-letter reasons).
FAILURE_REASONS = ("retriable", "timeout", "refused", "too_large", "invalid")
#: Failures that no retry can fix: the record goes to the dead-letter file.
DEAD_LETTER_REASONS = ("too_large", "invalid")
STATS_QUEUE_SIZE = 1000
#: The producer's request cap (aiokafka's default); a record above it is dead-lettered.
MAX_REQUEST_SIZE = 1 << 20
#: How long the producer waits to fill a batch: latency traded for fewer, fuller requests.
KAFKA_LINGER_MS = 5
#: Upper bound of a record's framing inside a batch beyond its key and value.
RECORD_OVERHEAD_BYTES = 64


class Sink(Protocol):
    """Where records go. `send` enqueues and returns the acknowledgement to await."""

    #: True when what it accepted is kept elsewhere (Kafka), not only in this process.
    durable: bool

    async def connect(self) -> None: ...
    async def send(self, topic_suffix: str, key: bytes, value: bytes) -> Awaitable[Any]: ...
    async def send_many(self, entries: list[Entry]) -> list[Awaitable[Any] | BaseException]:
        """One acknowledgement (or the error that stopped it) per entry, in order."""
        ...
    def classify(self, exc: BaseException) -> str | None:
        """A FAILURE_REASONS member, or None if `exc` is not a sink error (a bug: raised)."""
        ...
    async def close(self, timeout: float) -> None: ...


class Publisher:
    def __init__(self, sink: Sink, window: int = SEND_WINDOW, max_backoff: float = 5.0) -> None:
        self.sink = sink
        self.durable = sink.durable
        self.window = window
        self.max_backoff = max_backoff
        self.counters: Counter[str] = Counter({k: 0 for k in (
            "published", "retries", "connect_errors", "stats_published",
            "stats_dropped_queue_full", "stats_failed")})
        self.failures: Counter[str] = Counter({r: 0 for r in FAILURE_REASONS})
        self.dead_lettered: Counter[str] = Counter({r: 0 for r in DEAD_LETTER_REASONS})
        self.log: RecordLog | None = None
        self._connected = False
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._stats: deque[tuple[str, bytes, bytes]] = deque()
        self._stats_ready = asyncio.Event()
        self._oldest_inflight_ms: int | None = None
        self._persisted = -1

    # -- attributes for metrics -------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

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
        self._stats_task = asyncio.create_task(self._run_stats(), name="stats-publisher")

    async def stop(self, timeout: float) -> int:
        """Publishes what it can within `timeout` (the sink's close included); returns the
        number of records left unpublished (still in the log, after the cursor)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._stopping.set()
        self._stats_ready.set()
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
    async def _run(self, log: RecordLog) -> None:
        if not await self._connect():
            return
        inflight: deque[tuple[Entry, Awaitable[Any] | BaseException]] = deque()
        last_sent = log.cursor
        acked_bytes = 0
        backoff = 0.1
        last_persist = time.monotonic()
        while True:
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
            inflight.popleft()
            acked_bytes += len(entry.value)
            log.cursor = entry.seq  # contiguous prefix acknowledged
            self._oldest_inflight_ms = None
            if time.monotonic() - last_persist >= CURSOR_PERSIST_INTERVAL_S:
                log.acknowledged(entry.seq, acked_bytes)
                acked_bytes = 0
                await self._persist(log)
                last_persist = time.monotonic()

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

    # -- engine stats: not chained, best effort, counted --------------------------------------
    def offer_stats(self, topic_suffix: str, key: str, record: dict[str, Any]) -> None:
        if len(self._stats) >= STATS_QUEUE_SIZE:
            self.counters["stats_dropped_queue_full"] += 1
            return
        self._stats.append((topic_suffix, key.encode(), orjson.dumps(record)))
        self._stats_ready.set()

    async def _run_stats(self) -> None:
        while not self._stopping.is_set():
            await self._stats_ready.wait()
            self._stats_ready.clear()
            while self._stats and self._connected:
                topic, key, value = self._stats.popleft()
                try:
                    sent = await self.sink.send(topic, key, value)
                    sent_future = asyncio.ensure_future(sent)
                    sent_future.add_done_callback(self._stats_done)
                except Exception as exc:
                    if self.sink.classify(exc) is None:
                        raise
                    self.counters["stats_failed"] += 1
            if self._stats and not self._connected:
                await self._sleep(0.5)
                self._stats_ready.set()

    def _stats_done(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.counters["stats_failed"] += 1
        else:
            self.counters["stats_published"] += 1


def _failed(sent: Awaitable[Any] | BaseException) -> bool:
    if isinstance(sent, BaseException):
        return True
    if isinstance(sent, asyncio.Future) and sent.done():
        return sent.cancelled() or sent.exception() is not None
    return False


class MemorySink:
    """Keeps the newest records in a list (no-Kafka mode and tests): not durable; without
    Kafka the record log itself is the archive."""

    durable = False

    def __init__(self, max_records: int = 10_000) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []
        self.max_records = max_records
        self.trimmed = 0

    async def connect(self) -> None:
        pass

    async def send(self, topic_suffix: str, key: bytes, value: bytes) -> Awaitable[Any]:
        if len(self.records) >= self.max_records:
            self.records.pop(0)
            self.trimmed += 1
        self.records.append((topic_suffix, key.decode(), orjson.loads(value)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send_many(self, entries: list[Entry]) -> list[Awaitable[Any] | BaseException]:
        return [await self.send(e.topic, e.key, e.value) for e in entries]

    def classify(self, exc: BaseException) -> str | None:
        return None

    async def close(self, timeout: float) -> None:
        pass


class InMemoryPublisher(Publisher):
    """The publisher over a MemorySink; `records` are (topic suffix, key, record)."""

    def __init__(self, max_records: int = 10_000, durable: bool = False) -> None:
        sink = MemorySink(max_records)
        sink.durable = durable  # tests may stand in for a durable sink
        super().__init__(sink)
        self.memory = sink

    @property
    def records(self) -> list[tuple[str, str, dict[str, Any]]]:
        return self.memory.records

    @property
    def connected(self) -> bool:
        """Connected to Kafka: never (health and metrics report Kafka's state)."""
        return False


class KafkaSink:
    """aiokafka with acks=all. Uncompressed by default: gzip (the only codec without extra
    packages) halved the publish rate (~33k vs ~69k records/s to the test broker)."""

    durable = True

    def __init__(self, bootstrap: str, topic_prefix: str, compression: str | None = None,
                 request_timeout_ms: int = 30_000) -> None:
        self.bootstrap = bootstrap
        self.topic_prefix = topic_prefix
        self.compression = compression
        self.request_timeout_ms = request_timeout_ms
        #: Topic suffixes whose metadata is fetched at connect.
        self.topics = (*TOPICS.values(), "engine-stats")
        self.max_request_size = MAX_REQUEST_SIZE
        self._producer: Any = None
        self._partitions: dict[str, list[int]] = {}

    async def connect(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=False,
            linger_ms=KAFKA_LINGER_MS, compression_type=self.compression,
            max_batch_size=256 * 1024,
            request_timeout_ms=self.request_timeout_ms, max_request_size=self.max_request_size,
        )
        self._partitions.clear()
        try:
            await producer.start()
            # Metadata for every topic first (auto-creating them where the broker does): a
            # topic created by the first produce request that also carries batches for
            # another topic hung that other topic's batches for request_timeout_ms on the
            # test broker.
            for suffix in self.topics:
                await producer.partitions_for(f"{self.topic_prefix}.{suffix}")
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def send(self, topic_suffix: str, key: bytes, value: bytes) -> Awaitable[Any]:
        fut: Awaitable[Any] = await self._producer.send(f"{self.topic_prefix}.{topic_suffix}",
                                                        value, key=key)
        return fut

    async def send_many(self, entries: list[Entry]) -> list[Awaitable[Any] | BaseException]:
        """Builds the record batches itself (one per topic-partition, as full as the batch
        size allows) and submits each with `send_batch`: per record this is an append to a
        builder instead of a `send()` coroutine, about twice the records/s. Keys map to
        partitions as Kafka's default partitioner maps them, hashed for the whole window at
        once (kafka_partition.py)."""
        from aiokafka.errors import KafkaError, MessageSizeTooLargeError

        producer = self._producer
        out: list[Awaitable[Any] | BaseException | None] = [None] * len(entries)
        by_topic: dict[str, list[int]] = {}
        for i, entry in enumerate(entries):
            if len(entry.key) + len(entry.value) + RECORD_OVERHEAD_BYTES > self.max_request_size:
                out[i] = MessageSizeTooLargeError(
                    f"record of {len(entry.value)} bytes > max_request_size")
                continue
            by_topic.setdefault(entry.topic, []).append(i)

        async def submit(topic: str, partition: int, batch: Any, members: list[int]) -> None:
            try:
                fut: Awaitable[Any] | BaseException = await producer.send_batch(
                    batch, topic, partition=partition)
            except KafkaError as exc:
                fut = exc
            for j in members:
                out[j] = fut

        for suffix, indices in by_topic.items():
            topic = f"{self.topic_prefix}.{suffix}"
            partitions = self._partitions.get(topic)
            if partitions is None:
                try:
                    partitions = sorted(await producer.partitions_for(topic))
                except KafkaError as exc:
                    for i in indices:
                        out[i] = exc
                    continue
                self._partitions[topic] = partitions
            placed = partitions_for_keys([entries[i].key for i in indices], partitions)
            open_batches: dict[int, tuple[Any, list[int]]] = {}
            for i, partition in zip(indices, placed, strict=True):
                entry = entries[i]
                batch, members = open_batches.get(partition) or (producer.create_batch(), [])
                if batch.append(key=entry.key, value=entry.value, timestamp=None) is None:
                    await submit(topic, partition, batch, members)
                    batch, members = producer.create_batch(), []
                    batch.append(key=entry.key, value=entry.value, timestamp=None)
                members.append(i)
                open_batches[partition] = (batch, members)
            for partition, (batch, members) in open_batches.items():
                await submit(topic, partition, batch, members)
        return [o if o is not None else RuntimeError("unsent") for o in out]

    def classify(self, exc: BaseException) -> str | None:
        from aiokafka import errors

        if isinstance(exc, errors.MessageSizeTooLargeError | errors.RecordTooLargeError):
            return "too_large"
        if isinstance(exc, errors.CorruptRecordException | errors.InvalidMessageError |
                      errors.InvalidTopicError):
            return "invalid"
        if isinstance(exc, errors.KafkaTimeoutError | errors.RequestTimedOutError):
            return "timeout"
        if isinstance(exc, errors.KafkaError):
            return "retriable" if exc.retriable else "refused"
        return None

    async def close(self, timeout: float) -> None:
        """Bounded: with a hung broker aiokafka's stop() waits for in-flight batches up to
        request_timeout_ms, which can be past a pod's grace period."""
        if self._producer is None:
            return
        producer, self._producer = self._producer, None
        closing = asyncio.ensure_future(producer.stop())
        try:
            await asyncio.wait_for(asyncio.shield(closing), timeout)
        except TimeoutError:
            logger.warning("kafka producer did not close within the shutdown deadline")


def KafkaPublisher(bootstrap: str, topic_prefix: str, max_backoff: float = 5.0,
                   window: int = SEND_WINDOW) -> Publisher:
    return Publisher(KafkaSink(bootstrap, topic_prefix), window=window, max_backoff=max_backoff)
