"""A final trail (or a revision of one) becomes one record in the record log; once it is
durable there, the ingest WAL segments that held the trail are released.

With a content key store, the prompt and output a capture policy kept readable are sealed
into the record (records/content.py) and forgotten by the trail in memory: from then on the
query API shows them only while their key lives. Content retention (`expire_content`) runs
with the log's retention sweep."""

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
from vllm_audit_agent.records.content import seal_fields
from vllm_audit_agent.records.content_keys import ContentKeyStore
from vllm_audit_agent.records.erasure import expiry_erasure
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
                 counters: Counter[str], record_grammar_max_bytes: int,
                 content_keys: ContentKeyStore | None = None,
                 content_retention_days: float = 0.0) -> None:
        self.records = records
        self.content_keys = content_keys
        #: Days sealed content is kept (0: as long as its record).
        self.content_retention_days = content_retention_days
        #: The expiry bound an erasure record is on its way for (not durable yet).
        self._expiring_to = 0
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
        if self.content_keys is not None and seal_fields(fields, self.content_keys) is not None:
            trail.content = fields["content"]
            _forget_plain_content(trail)
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
        self.expire_content()
        return deleted

    def expire_content(self) -> int:
        """Content retention: the keys of every period that ended more than
        `content_retention_days` ago go, once a signed erasure record naming the bound is
        durable. Returns how many keys the record names (0: nothing due)."""
        keys = self.content_keys
        if keys is None or self.content_retention_days <= 0:
            return 0
        horizon = int((keys.clock() - self.content_retention_days * 86400) * 1000)
        before = keys.period_end(horizon) - keys.period_ms
        if before <= max(keys.expired_before_ms, self._expiring_to):
            return 0
        count = sum(1 for k in keys.live() if k.period_end_ms <= before)
        if not count:
            keys.expire(before)
            return 0
        self._expiring_to = before
        record = expiry_erasure(self.records.log_id, int(keys.clock() * 1000), before, count,
                                self.content_retention_days)
        self.counters["content_keys_expired"] += count
        def expire() -> None:
            keys.expire(before)
        self.records.append_erasure(record, expire)
        return count


def _forget_plain_content(trail: Trail) -> None:
    """The trail's HTTP half without its prompt and output (the record sealed them), in
    `http_event` and among its events (the same bytes object)."""
    old = trail.http_event
    if old is None:
        return
    event = pb.Event.FromString(old)
    event.http.prompt = ""
    event.http.output = ""
    new = event.SerializeToString()
    trail.http_event = new
    trail.events = tuple(new if raw is old else raw for raw in trail.events)
