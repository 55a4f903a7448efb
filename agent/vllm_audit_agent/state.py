"""The agent's shared state: what ingest writes and what queries, metrics and control read.

Everything here is touched only from the agent's event loop (no locks), except the WAL,
which is written from a worker thread under `wal_lock` so an fsync never blocks the loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.config import AgentConfig
from vllm_audit_agent.control.level_file import PersistedLevel, load_level, save_level
from vllm_audit_agent.delivery.publisher import Publisher
from vllm_audit_agent.ingest.sources import SeqWindow, SourceState
from vllm_audit_agent.model.record import (
    GRAMMAR_PROOF_LEVELS,
    event_id,
    grammar_proof,
    message_to_dict,
    record_from_fields,
)
from vllm_audit_agent.model.validation import CLAMPABLE_FIELDS, Classified, classify, saturating_add
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.storage.wal import WriteAheadLog
from vllm_audit_agent.telemetry.engines import EngineTable
from vllm_audit_agent.telemetry.gpu import GpuSampler
from vllm_audit_agent.telemetry.request_metrics import RequestMetrics
from vllm_audit_agent.telemetry.stats_history import StatsHistory
from vllm_audit_agent.trails.store import Trail, TrailStore

#: Batches read from one ingest stream but not yet answered, at most (ingest.py pipelines).
PIPELINE_DEPTH = 8
#: At most one engine-stats record per source per this many seconds goes to Kafka.
_REFUSAL_PREFIX = "REFUSAL_REASON_"
#: Lower-case RefusalReason names (the proto enum is the definition) -> enum values.
REFUSAL_REASONS: dict[str, int] = {
    name[len(_REFUSAL_PREFIX):].lower(): value
    for name, value in ingest_pb2.RefusalReason.items() if value}
#: Refusals a resend cannot cure: the hook drops the batch, so the agent counts it as dropped
#: too (agent_dropped `refused_batches_<reason>`); the others are retried by the hook.
PERMANENT_REFUSALS = ("invalid", "too_big")
#: WAL refusals that say the disk (not the configured cap) is refusing: ingest is unhealthy.
DISK_REFUSALS = ("disk_full", "disk_error")

logger = logging.getLogger("vllm_audit.agent")


class Session:
    """One connected hook stream; config pushes go through `push`."""

    def __init__(self) -> None:
        #: Replies in order: config pushes, refusals, and the store units whose result is
        #: the answer (ingest.py pipelines a stream: the writer awaits each in turn).
        self.outbox: asyncio.Queue[
            ingest_pb2.IngestReply | asyncio.Future[ingest_pb2.IngestReply]] = asyncio.Queue()
        #: Batches of this stream read but not yet answered (bounded: ingest.PIPELINE_DEPTH).
        self.unanswered = asyncio.Semaphore(PIPELINE_DEPTH)
        #: A store unit of this stream failed: the stream ends with a status.
        self.failure: BaseException | None = None
        #: The handler is still reading the stream (the writer may interrupt it).
        self.reading = True
        #: Set by ingest from the stream's batches (the level report is per source).
        self.source_id = ""
        self.connected_at = time.monotonic()


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
        #: Fields repaired by validation at ingest, by "<Message>.<field>" (validation.py).
        self.clamped_fields: Counter[str] = Counter(dict.fromkeys(CLAMPABLE_FIELDS, 0))
        #: False while the WAL refuses appends for disk reasons; True after a good append.
        self.ingest_healthy = True
        #: Set at shutdown: new batches are refused (shutting_down), the hook keeps them.
        self.stopping = False
        #: Store units (check, append, mark, apply) under way; each runs to its end even when
        #: the stream that started it is cancelled.
        self.pending_stores: set[asyncio.Task[ingest_pb2.IngestReply]] = set()
        self.sessions: set[Session] = set()
        # -- level control --
        self.level = config.audit_level
        self.trails.audit_level = config.audit_level
        self.level_version = 1
        #: Random per agent start: a hook takes any config from an epoch it has not seen, so a
        #: restarted agent (versions from 1 again) is never ignored.
        self.level_epoch = secrets.randbits(63) | 1
        self.level_changed_at = time.monotonic()
        #: What each source reports it runs: (applied level, config epoch, config version).
        self.applied_levels: dict[str, tuple[int, int, int]] = {}
        self._load_level()
        self.started = time.monotonic()
        self.ready = False
        #: Internal errors swallowed by the agent; tests assert this stays empty.
        self.errors: Counter[str] = Counter()
        for reason in REFUSAL_REASONS:
            self.counters[f"refused_batches_{reason}"] += 0
        for name in ("duplicate_batches", "wal_replay_duplicates", "dedup_holes_skipped",
                     "dedup_epochs_evicted"):
            self.counters[name] += 0
        for name in ("events_without_body", "malformed_batches", "replay_quarantined_batches",
                     "replay_quarantine_failed"):
            self.agent_dropped[name] += 0
        self.engines, self.request_metrics = EngineTable(), RequestMetrics()
        self.stats_history = StatsHistory(config.data_dir, config.stats_history_bytes)

    def _on_final(self, trail: Trail) -> None:
        """A final trail (or revision) becomes one record in the record log; once it is
        durable there, the ingest WAL segments that held the trail are released."""
        replayed = self.records.replay_event_ids
        if replayed is not None and self._recorded_before(trail, replayed):
            # Replaying the ingest WAL at start rebuilt a trail the log already holds.
            self.request_metrics.observe(trail.fields())
            self.counters["records_deduplicated_at_replay"] += 1
            self.trails.delivered(trail)
            return
        fields = trail.fields()
        self.request_metrics.observe(fields)
        proof = (grammar_proof(trail.events, self.config.record_grammar_max_bytes)
                 if trail.grammar_backend and trail.audit_level in GRAMMAR_PROOF_LEVELS
                 else ([], 0))
        record = record_from_fields(fields, self._engine_snapshot(trail), proof)
        segments = self.trails.take_segments(trail)
        self.records.append(record, on_recorded=lambda: self.trails.release(segments))

    def _recorded_before(self, trail: Trail, replayed: set[str]) -> bool:
        """At start, whether the log already holds this record of a trail the WAL replay
        rebuilt. One whose newest record was forced and which the replay rebuilt whole is
        new: it becomes that record's next revision (the same event_id on a different
        record would let a consumer keep the forced one)."""
        known = self.records.recorded_before(trail.request_id)
        if known is None:
            return event_id(trail.request_id, trail.revision) in replayed
        revision, forced = known
        if forced and trail.finalised_by == q.FINALISED_BY_COMPLETE and trail.revision <= revision:
            trail.revision = revision + 1
            self.records.recorded_trails[trail.request_id] = (revision + 1, None)
            return False
        return trail.revision <= revision

    def _engine_snapshot(self, trail: Trail) -> pb.EngineStats | None:
        """The latest engine snapshot of the trail's own processes, else of its model."""
        for source_id in trail.source_ids:
            source = self.sources.get(source_id)
            if source is not None and source.last_stats is not None:
                return source.last_stats
        for source in self.sources.values():
            if source.last_stats is not None and source.model == trail.model:
                return source.last_stats
        return None

    def agent_drops(self) -> dict[str, int]:
        """Everything the agent itself lost, by reason (one view for stats and metrics)."""
        publisher = {f"publisher_{k}": v for k, v in self.publisher.counters.items()
                     if k in ("stats_dropped_queue_full", "stats_failed")}
        refused = {f"refused_batches_{r}": self.counters[f"refused_batches_{r}"]
                   for r in PERMANENT_REFUSALS}
        return {**self.agent_dropped, **refused, **publisher}

    def refused_by_reason(self) -> dict[str, int]:
        """Batches refused (not stored), by lower-case RefusalReason name."""
        return {r: self.counters[f"refused_batches_{r}"] for r in REFUSAL_REASONS}

    async def stop_ingest(self, timeout: float = 5.0) -> None:
        """At shutdown, before the ingest server stops: refuse new batches (shutting_down,
        so hooks keep them) and let the store units under way finish."""
        self.stopping = True
        if self.pending_stores:
            await asyncio.wait(list(self.pending_stores), timeout=timeout)

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

    # -- level control ---------------------------------------------------------------------
    def _load_level(self) -> None:
        persisted = load_level(self.config.data_dir)
        if persisted is None:
            return
        self.level_version = persisted.version
        if persisted.configured_level == self.config.audit_level:
            self.level = self.trails.audit_level = persisted.level
            logger.info("audit level %s (set through the control API before this start)",
                        pb.AuditLevel.Name(self.level))  # type: ignore[arg-type]
        else:
            logger.info("audit level %s from the configuration, which changed since the level "
                        "%s was set", pb.AuditLevel.Name(self.level),  # type: ignore[arg-type]
                        pb.AuditLevel.Name(persisted.level))  # type: ignore[arg-type]

    def hook_config(self) -> ingest_pb2.IngestReply:
        return ingest_pb2.IngestReply(config=ingest_pb2.HookConfig(
            level=self.level, version=self.level_version, epoch=self.level_epoch))  # type: ignore[arg-type]

    def set_level(self, level: int) -> int:
        """Persists, then pushes the level to every connected hook; returns how many.

        Raises OSError (level unchanged) when it cannot be persisted."""
        version = self.level_version + 1
        save_level(self.config.data_dir, PersistedLevel(level, version, self.config.audit_level))
        self.level, self.level_version = level, version
        self.trails.audit_level = level
        self.level_changed_at = time.monotonic()
        reply = self.hook_config()
        for session in self.sessions:
            session.outbox.put_nowait(reply)
        return len(self.sessions)

    def source_levels(self, now: float | None = None) -> list[q.SourceLevel]:
        """The level each connected hook reports it runs; `mismatch` when it is not the
        agent's level `level_apply_deadline_seconds` after the change (or the connection)."""
        now = time.monotonic() if now is None else now
        deadline = self.config.level_apply_deadline_seconds
        out = []
        for session in self.sessions:
            level, epoch, version = self.applied_levels.get(session.source_id, (0, 0, 0))
            source = self.sources.get(session.source_id)
            late = now - max(self.level_changed_at, session.connected_at) > deadline
            out.append(q.SourceLevel(
                source_id=session.source_id, process_role=source.role if source else "",
                applied_level=level, config_epoch=epoch, config_version=version,  # type: ignore[arg-type]
                connected=True, mismatch=late and level != self.level))
        return out

    def self_timings(self) -> list[tuple[str, str, pb.HookSelfTiming]]:
        """(source, role, figures) of connected hooks that report their own cost."""
        out = []
        for source_id in sorted({s.source_id for s in self.sessions}):
            source = self.sources.get(source_id)
            if source is not None and source.self_timing is not None:
                out.append((source_id, source.role, source.self_timing))
        return out

    def level_mismatch_sources(self) -> int:
        """Connected hooks not running the agent's level past the deadline (alert on > 0)."""
        return sum(1 for s in self.source_levels() if s.mismatch)

    def source(self, source_id: str) -> SourceState:
        state = self.sources.get(source_id)
        if state is None:
            state = self.sources[source_id] = SourceState()
        return state

    def window(self, batch: pb.Batch) -> SeqWindow:
        """The de-duplication window of the batch's (source_id, epoch)."""
        source = self.source(batch.source_id)
        evicted = source.epochs_evicted
        window = source.window(batch.epoch)
        self.counters["dedup_epochs_evicted"] += source.epochs_evicted - evicted
        return window

    def mark_stored(self, batch: pb.Batch) -> None:
        """Remembers (source_id, epoch, seq) as stored, so a resend is a duplicate."""
        window = self.window(batch)
        skipped = window.holes_skipped
        window.mark(batch.seq)
        self.counters["dedup_holes_skipped"] += window.holes_skipped - skipped

    def apply_batch(self, batch: pb.Batch, segment: int, events: Classified | None = None
                    ) -> None:
        """Applies a batch stored in WAL `segment` to the trail store, stats and counters.
        `events`: the batch's events as validation read them (read again when not given).

        Gap-marker counts are hook-supplied uint64s: their sums saturate at 2^64-1."""
        if events is None:
            events = classify(batch)
        source = self.source(batch.source_id)
        source.role, source.model = batch.process_role, batch.model or source.model
        if batch.applied_level:
            self.applied_levels[batch.source_id] = (
                batch.applied_level, batch.config_epoch, batch.config_version)
        if batch.HasField("self_timing"):
            source.self_timing = batch.self_timing
        self.counters["batches"] += 1
        self.counters["events"] += len(batch.events)
        stats = [e for e, kind in zip(events.events, events.kinds, strict=True)
                 if kind == "engine_stats"] if "engine_stats" in events.kinds else []
        self.engines.observe_batch(batch, source.model, stats)
        for reason, n in batch.gap.dropped_by_reason.items():
            saturating_add(self.hook_dropped, reason, n)
        if batch.gap.first_missing_seq:
            window = self.window(batch)
            skipped = window.holes_skipped
            saturating_add(self.hook_dropped, "missing_batches", window.count_missing(
                batch.gap.first_missing_seq, batch.gap.last_missing_seq))
            self.counters["dedup_holes_skipped"] += window.holes_skipped - skipped
        for event in stats:
            source.last_stats = event.engine_stats
            self._publish_stats(batch, source, event)
        self.trails.apply(batch, segment, events)

    def _publish_stats(self, batch: pb.Batch, source: SourceState, event: pb.Event) -> None:
        if not self.engines.due(batch.source_id, event.engine_stats.engine_index,
                                self.config.engine_stats_interval_seconds):
            return
        record = message_to_dict(event.engine_stats)
        record.update({"schema": 1, "source_id": batch.source_id, "model": source.model,
                       "timestamp_ms": event.time_unix_nano // 1_000_000})
        self.publisher.offer_stats("engine-stats", batch.source_id, record)
        self.stats_history.append(record)

    def latest_engine_stats(self) -> list[tuple[str, SourceState]]:
        return [(sid, s) for sid, s in self.sources.items() if s.last_stats is not None]
