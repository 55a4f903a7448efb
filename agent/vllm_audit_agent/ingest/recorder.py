"""A final trail (or a revision of one) becomes one record in the record log; once it is
durable there, the ingest WAL segments that held the trail are released."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.model.record import (
    GRAMMAR_PROOF_LEVELS,
    admin_record,
    event_id,
    grammar_proof,
    record_from_fields,
)
from vllm_audit_agent.model.trail import Trail
from vllm_audit_agent.records.chain import RECORD_TYPE_ADMIN
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.storage.wal import WriteAheadLog
from vllm_audit_agent.telemetry.request_metrics import RequestMetrics
from vllm_audit_agent.trails.store import TrailStore


class Recorder:
    """`engine_snapshot`: the engine stats a trail's record carries (ingest's latest of the
    trail's own processes, else of its model)."""

    def __init__(self, records: RecordLog, wal: WriteAheadLog, trails: TrailStore,
                 request_metrics: RequestMetrics,
                 engine_snapshot: Callable[[Trail], pb.EngineStats | None],
                 counters: Counter[str], record_grammar_max_bytes: int) -> None:
        self.records = records
        self.wal = wal
        self.trails = trails
        self.request_metrics = request_metrics
        self.engine_snapshot = engine_snapshot
        self.counters = counters
        self.record_grammar_max_bytes = record_grammar_max_bytes

    def record(self, trail: Trail) -> None:
        trails = self.trails
        replayed = self.records.replay_event_ids
        if replayed is not None and self._recorded_before(trail, replayed):
            # Replaying the ingest WAL at start rebuilt a trail the log already holds.
            self.request_metrics.observe(trail.fields())
            self.counters["records_deduplicated_at_replay"] += 1
            trails.delivered(trail)
            return
        fields = trail.fields()
        self.request_metrics.observe(fields)
        proof = (grammar_proof(trail.events, self.record_grammar_max_bytes)
                 if trail.grammar_backend and trail.audit_level in GRAMMAR_PROOF_LEVELS
                 else ([], 0))
        record = record_from_fields(fields, self.engine_snapshot(trail), proof)
        segments = trails.take_segments(trail)
        self.records.append(record, on_recorded=lambda: trails.release(segments))

    def record_admin(self, event: pb.Event, batch: pb.Batch, segment: int) -> None:
        """A call to a vLLM administrative endpoint becomes an admin record at once; the WAL
        segment that holds it stays until the record is durable."""
        record = admin_record(event, batch)
        replayed = self.records.replay_event_ids
        if replayed is not None and record["event_id"] in replayed:
            self.counters["records_deduplicated_at_replay"] += 1
            return
        trails = self.trails
        trails.segment_refs[segment] += 1
        self.counters["admin_records"] += 1
        self.records.append(record, on_recorded=lambda: trails.release((segment,)),
                            kind=RECORD_TYPE_ADMIN)

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

    def reclaim_wal(self) -> int:
        """Deletes sealed ingest WAL segments no longer needed; returns how many.

        A segment goes once every trail in it is recorded (durable in the record log),
        whether or not Kafka has it yet: from there on the record log is what is owed
        downstream. The record log's own retention (size, age; counted) runs here too."""
        deleted = 0
        for segment in self.wal.segments():
            if not self.trails.segment_refs.get(segment) and self.wal.delete(segment):
                deleted += 1
        self.records.reclaim()
        return deleted
