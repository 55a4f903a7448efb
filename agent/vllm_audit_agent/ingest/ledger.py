"""What ingest keeps between batches: the WAL it stores them in, de-duplication windows per
source, counters by reason, and applying a stored batch to the trail store and engine stats.

Touched only from the agent's event loop (no locks), except the WAL, which is written from a
worker thread under `wal_lock` so an fsync never blocks the loop.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2
from vllm_audit_agent.control.level import LevelControl
from vllm_audit_agent.delivery.publisher import Publisher
from vllm_audit_agent.ingest.sources import SeqWindow, SourceState
from vllm_audit_agent.model.record import message_to_dict
from vllm_audit_agent.model.trail import Trail
from vllm_audit_agent.model.validation import CLAMPABLE_FIELDS, Classified, classify, saturating_add
from vllm_audit_agent.storage.wal import WriteAheadLog
from vllm_audit_agent.telemetry.engines import EngineTable
from vllm_audit_agent.telemetry.snapshot_throttle import TrailingThrottle
from vllm_audit_agent.telemetry.stats_history import StatsHistory
from vllm_audit_agent.trails.store import TrailStore

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


class IngestLedger:
    def __init__(self, wal: WriteAheadLog, trails: TrailStore, levels: LevelControl,
                 engines: EngineTable, publisher: Publisher, stats_history: StatsHistory,
                 engine_stats_interval_seconds: float) -> None:
        self.wal = wal
        self.wal_lock = asyncio.Lock()
        self.trails = trails
        self.levels = levels
        self.engines = engines
        self.publisher = publisher
        self.stats_history = stats_history
        self.engine_stats_interval_seconds = engine_stats_interval_seconds
        #: One snapshot per engine per interval, the last of a burst included (published when
        #: the interval ends): keyed by (source_id, engine_index).
        self.stats_throttle: TrailingThrottle[tuple[str, int], tuple[str, str, pb.Event]] = \
            TrailingThrottle(engine_stats_interval_seconds, self._emit_stats)
        #: (admin event, its batch, its WAL segment) -> its record (Recorder.record_admin).
        self.on_admin: Callable[[pb.Event, pb.Batch, int], None] | None = None
        self.counters: Counter[str] = Counter()
        self.hook_dropped: Counter[str] = Counter()
        self.agent_dropped: Counter[str] = Counter()
        self.sources: dict[str, SourceState] = {}
        #: Fields repaired by validation at ingest, by "<Message>.<field>" (validation.py).
        self.clamped_fields: Counter[str] = Counter(dict.fromkeys(CLAMPABLE_FIELDS, 0))
        #: False while the WAL refuses appends for disk reasons; True after a good append.
        self.healthy = True
        #: Set at shutdown: new batches are refused (shutting_down), the hook keeps them.
        self.stopping = False
        #: Store units (check, append, mark, apply) under way; each runs to its end even when
        #: the stream that started it is cancelled.
        self.pending_stores: set[asyncio.Task[ingest_pb2.IngestReply]] = set()
        # Every counter is born at 0, so increase() sees the first of each.
        for reason in REFUSAL_REASONS:
            self.counters[f"refused_batches_{reason}"] += 0
        for name in ("duplicate_batches", "wal_replay_duplicates", "dedup_holes_skipped",
                     "dedup_epochs_evicted", "read_audit_answered", "read_audit_not_found",
                     "read_audit_invalid"):
            self.counters[name] += 0
        for name in ("events_without_body", "malformed_batches", "replay_quarantined_batches",
                     "replay_quarantine_failed"):
            self.agent_dropped[name] += 0

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

    async def stop(self, timeout: float = 5.0) -> None:
        """At shutdown, before the ingest server stops: refuse new batches (shutting_down,
        so hooks keep them) and let the store units under way finish."""
        self.stopping = True
        if self.pending_stores:
            await asyncio.wait(list(self.pending_stores), timeout=timeout)
        self.stats_throttle.flush()  # the last snapshot of a burst, before the publisher stops

    def source(self, source_id: str) -> SourceState:
        state = self.sources.get(source_id)
        if state is None:
            state = self.sources[source_id] = SourceState()
        return state

    def role_of(self, source_id: str) -> str:
        source = self.sources.get(source_id)
        return source.role if source else ""

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
        if batch.instance_tag:
            source.instance_tag = batch.instance_tag
        if batch.applied_level:
            self.levels.note_applied(batch.source_id, batch.applied_level, batch.config_epoch,
                                     batch.config_version)
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
        if "admin" in events.kinds and self.on_admin is not None:
            for event, kind in zip(events.events, events.kinds, strict=True):
                if kind == "admin":
                    self.on_admin(event, batch, segment)
        self.trails.apply(batch, segment, events)

    def _publish_stats(self, batch: pb.Batch, source: SourceState, event: pb.Event) -> None:
        self.stats_throttle.offer((batch.source_id, event.engine_stats.engine_index),
                                  (batch.source_id, source.model, event))

    def _emit_stats(self, snapshot: tuple[str, str, pb.Event]) -> None:
        source_id, model, event = snapshot
        record = message_to_dict(event.engine_stats)
        record.update({"schema": 1, "source_id": source_id, "model": model,
                       "timestamp_ms": event.time_unix_nano // 1_000_000})
        self.publisher.offer_stats("engine-stats", source_id, record)
        self.stats_history.append(record)

    def engine_snapshot(self, trail: Trail) -> pb.EngineStats | None:
        """The latest engine snapshot of the trail's own processes, else of its model."""
        for source_id in trail.source_ids:
            source = self.sources.get(source_id)
            if source is not None and source.last_stats is not None:
                return source.last_stats
        for source in self.sources.values():
            if source.last_stats is not None and source.model == trail.model:
                return source.last_stats
        return None

    def latest_engine_stats(self) -> list[tuple[str, SourceState]]:
        return [(sid, s) for sid, s in self.sources.items() if s.last_stats is not None]

    def self_timings(self, connected: Iterable[str]) -> list[tuple[str, str, pb.HookSelfTiming]]:
        """(source, role, figures) of the `connected` hooks that report their own cost."""
        out = []
        for source_id in sorted(set(connected)):
            source = self.sources.get(source_id)
            if source is not None and source.self_timing is not None:
                out.append((source_id, source.role, source.self_timing))
        return out
