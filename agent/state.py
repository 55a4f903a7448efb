"""The agent's shared state: what ingest writes and what queries, metrics and control read.

Everything here is touched only from the agent's event loop (no locks), except the WAL,
which is written from a worker thread under `wal_lock` so an fsync never blocks the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2

from .config import AgentConfig
from .gpu import GpuSampler
from .publisher import Publisher
from .recordlog import RecordLog, event_id
from .records import message_to_dict, trail_record
from .sources import SourceState
from .trails import Trail, TrailStore
from .wal import WriteAheadLog

#: At most one engine-stats record per source per this many seconds goes to Kafka.
ENGINE_STATS_PUBLISH_INTERVAL_S = 1.0


class Session:
    """One connected hook stream; config pushes go through `push`."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[ingest_pb2.IngestReply] = asyncio.Queue()
        self.source_id = ""


class AgentState:
    def __init__(self, config: AgentConfig, wal: WriteAheadLog, publisher: Publisher,
                 gpu: GpuSampler, records: RecordLog) -> None:
        self.config = config
        self.wal = wal
        self.records = records
        self.wal_lock = asyncio.Lock()
        self.publisher = publisher
        self.gpu = gpu
        self.trails = TrailStore(config.max_trails, config.max_trail_events,
                                 config.linger_seconds, self._on_final,
                                 max_bytes=config.max_trail_bytes)
        self.counters: Counter[str] = Counter()
        self.hook_dropped: Counter[str] = Counter()
        self.agent_dropped: Counter[str] = Counter()
        self.sources: dict[str, SourceState] = {}
        self.sessions: set[Session] = set()
        self.level = config.audit_level
        self.level_version = 1
        self.started = time.monotonic()
        self.ready = False
        #: Internal errors swallowed by the agent; tests assert this stays empty.
        self.errors: Counter[str] = Counter()

    def _on_final(self, trail: Trail) -> None:
        """A final trail (or revision) becomes one record in the record log; once it is
        durable there, the ingest WAL segments that held the trail are released."""
        record = trail_record(trail.summary)
        replayed = self.records.replay_event_ids
        if replayed is not None and event_id(record) in replayed:
            # Replaying the ingest WAL at start rebuilt a trail the log already holds.
            self.counters["records_deduplicated_at_replay"] += 1
            self.trails.delivered(trail)
            return
        self.records.append(record, on_recorded=lambda: self.trails.delivered(trail))

    def agent_drops(self) -> dict[str, int]:
        """Everything the agent itself lost, by reason (one view for stats and metrics)."""
        publisher = {f"publisher_{k}": v for k, v in self.publisher.counters.items()
                     if k in ("stats_dropped_queue_full", "stats_failed")}
        return {**self.agent_dropped, **publisher}

    def reclaim_wal(self) -> int:
        """Deletes sealed ingest WAL segments no longer needed; returns how many.

        A segment goes once every trail in it is recorded (durable in the record log),
        whether or not Kafka has it yet: from there on the record log is what is owed
        downstream. The record log's own retention (size, age; counted) runs here too."""
        wal = self.wal
        deleted = 0
        for segment in wal.segments():
            if not self.trails.segment_refs.get(segment) and wal.delete(segment):
                deleted += 1
        self.records.reclaim()
        return deleted

    def hook_config(self) -> ingest_pb2.IngestReply:
        return ingest_pb2.IngestReply(
            config=ingest_pb2.HookConfig(level=self.level, version=self.level_version))  # type: ignore[arg-type]

    def set_level(self, level: int) -> int:
        self.level = level
        self.level_version += 1
        reply = self.hook_config()
        for session in self.sessions:
            session.outbox.put_nowait(reply)
        return len(self.sessions)

    def source(self, source_id: str) -> SourceState:
        state = self.sources.get(source_id)
        if state is None:
            state = self.sources[source_id] = SourceState()
        return state

    def apply_batch(self, batch: pb.Batch, segment: int) -> None:
        """Applies a batch stored in WAL `segment` to the trail store, stats and counters."""
        source = self.source(batch.source_id)
        source.role, source.model = batch.process_role, batch.model or source.model
        self.counters["batches"] += 1
        self.counters["events"] += len(batch.events)
        for reason, n in batch.gap.dropped_by_reason.items():
            self.hook_dropped[reason] += n
        if batch.gap.first_missing_seq:
            self.hook_dropped["missing_batches"] += source.count_missing(
                batch.gap.first_missing_seq, batch.gap.last_missing_seq)
        for event in batch.events:
            if event.WhichOneof("body") == "engine_stats":
                source.last_stats = event.engine_stats
                self._publish_stats(batch, source, event)
        self.trails.apply(batch, segment)

    def _publish_stats(self, batch: pb.Batch, source: SourceState, event: pb.Event) -> None:
        now = time.monotonic()
        if now - source.last_stats_published < ENGINE_STATS_PUBLISH_INTERVAL_S:
            return
        source.last_stats_published = now
        record = message_to_dict(event.engine_stats)
        record.update({"schema": 1, "source_id": batch.source_id, "model": source.model,
                       "timestamp_ms": event.time_unix_nano // 1_000_000})
        self.publisher.offer_stats("engine-stats", batch.source_id, record)

    def latest_engine_stats(self) -> list[tuple[str, SourceState]]:
        return [(sid, s) for sid, s in self.sources.items() if s.last_stats is not None]
