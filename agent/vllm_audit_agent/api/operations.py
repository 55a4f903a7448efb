"""What the query, control and management calls of the agent do, once, for both transports.

The gRPC servicers (query.py) and the HTTP management API (http_api.py) translate their
requests into the proto request messages, call `AuditApi`, and translate its answer or its
`ApiError` (a gRPC status code and a message; http_api.py maps the code to an HTTP status).
Who may call what was decided before (gate.py `Gate`).

The reads (list, get, export, watch, aggregates) are `TrailReads` (reads.py) over the agent's
`TrailSource` (agent_trails.py: its trail index in memory, its record log on disk); the fleet
service runs the same reads over its store. What is the agent's alone is here: health, stats
and control.

Delete and clear act on the query store and its index only: the record log stays append-only
(it expires by retention alone), so `export` (which reads the record log) still returns a
deleted trail's records, and `verify` still passes. Erasure (`erase_subject`) changes no
record either: it destroys the subject's content keys (records/content_keys.py) once a signed
erasure record naming them is durable, so their content is unreadable in every copy.
"""

from __future__ import annotations

import time

import grpc

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.agent_trails import AgentTrailSource
from vllm_audit_agent.api.errors import ApiError
from vllm_audit_agent.api.gate import current_principal, note_for_access_record
from vllm_audit_agent.api.page_tokens import PageTokens
from vllm_audit_agent.api.reads import TrailReads
from vllm_audit_agent.api.scope import visible
from vllm_audit_agent.api.usage import PriceTable
from vllm_audit_agent.config import LEVELS
from vllm_audit_agent.records.erasure import subject_erasure
from vllm_audit_agent.state import AgentState
from vllm_audit_agent.trails.index import TrailIndex
from vllm_audit_agent.trails.store import TrailOpen

#: What ClearTrailsRequest.confirm must say: clearing the query store is never an accident.
CLEAR_CONFIRMATION = "delete-all-trails"
#: Seconds an erasure waits for its record to be durable before answering UNAVAILABLE.
ERASURE_DURABLE_TIMEOUT_S = 30.0


class AuditApi(TrailReads):
    def __init__(self, state: AgentState, index: TrailIndex,
                 page_tokens: PageTokens | None = None, prices: PriceTable | None = None) -> None:
        super().__init__(AgentTrailSource(state, index), page_tokens, prices)
        self.state = state
        self.index = index

    # -- reads -----------------------------------------------------------------------------
    def health(self) -> q.HealthResponse:
        state = self.state
        return q.HealthResponse(
            status="SERVING" if state.ready else "NOT_SERVING",
            uptime_s=time.monotonic() - state.started,
            gpu_available=state.gpu.available,
            kafka_configured=state.config.kafka_bootstrap is not None,
            kafka_connected=state.publisher.connected,
            connected_sources=len(state.sessions),
        )

    def stats(self) -> q.StatsResponse:
        state = self.state
        trails = state.trails
        response = q.StatsResponse(
            batches_ingested=state.counters["batches"],
            events_ingested=state.counters["events"],
            duplicate_batches=state.counters["duplicate_batches"],
            hook_dropped_by_reason=dict(state.hook_dropped),
            trails_active=self.index.active_count(),
            trails_finished=sum(trails.finished_by_state.values()),
            trails_evicted=trails.counters["evicted_final"] + trails.counters["evicted_active"],
            trail_store_bytes=trails.bytes,
            wal_bytes=state.wal.size,
            records_published=state.publisher.counters["published"],
            agent_dropped_by_reason=state.agent_drops(),
            # the ignore[arg-type] below: an int for a contract enum (stubs want its ValueType)
            audit_level=state.level,  # type: ignore[arg-type]
        )
        levels = state.source_levels()
        response.source_levels.extend(levels)
        response.level_mismatch_sources = sum(1 for s in levels if s.mismatch)
        latest = [s.last_stats for _, s in state.latest_engine_stats() if s.last_stats]
        if latest:
            response.latest_engine_stats.CopyFrom(latest[-1])
        return response

    # -- control ---------------------------------------------------------------------------
    def set_level(self, request: q.SetAuditLevelRequest) -> q.SetAuditLevelResponse:
        if request.level not in pb.AuditLevel.values() or \
                request.level == pb.AUDIT_LEVEL_UNSPECIFIED:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"level must be one of {', '.join(n.upper() for n in LEVELS)}; "
                           f"got {request.level}")
        previous = self.state.level
        try:
            notified = self.state.set_level(request.level)
        except OSError as exc:
            # Not persisted means not changed: a restart would silently bring the old level back.
            raise ApiError(grpc.StatusCode.UNAVAILABLE,
                           f"could not persist the audit level: {exc}; level unchanged") from None
        note_for_access_record(previous_level=pb.AuditLevel.Name(previous),
                               version=self.state.level_version)
        self.state.records.record_level(pb.AuditLevel.Name(request.level), "control API")
        return q.SetAuditLevelResponse(level=request.level, version=self.state.level_version,
                                       sources_notified=notified)

    def delete_trail(self, request: q.DeleteTrailRequest) -> q.DeleteTrailResponse:
        """Removes one final trail from the query store (its records stay in the log)."""
        if not request.request_id:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "request_id is required")
        trail = self.state.trails.get(request.request_id)
        if trail is None or not visible(trail.summary):
            raise ApiError(grpc.StatusCode.NOT_FOUND,
                           f"no trail for request id {request.request_id!r}")
        try:
            self.state.trails.delete(request.request_id)
        except TrailOpen as exc:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        return q.DeleteTrailResponse(summary=trail.summary)

    def clear_trails(self, request: q.ClearTrailsRequest) -> q.ClearTrailsResponse:
        """Removes every final trail from the query store; open ones stay (their records are
        not written yet). Needs `confirm` = CLEAR_CONFIRMATION."""
        if request.confirm != CLEAR_CONFIRMATION:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"clear removes every final trail from the query store: confirm with "
                           f"confirm={CLEAR_CONFIRMATION!r} (got {request.confirm!r})")
        deleted, kept = self.state.trails.clear()
        return q.ClearTrailsResponse(deleted=deleted, kept_open=kept)

    async def erase_subject(self, request: q.EraseSubjectRequest) -> q.EraseSubjectResponse:
        """Destroys every content key of one user (in a tenant) after a signed erasure record
        naming them (by count and id, the user by HMAC) is durable."""
        if not request.user:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "user is required")
        if not request.reason.strip():
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           "reason is required: why this erasure (a ticket, the request's basis)")
        keys = self.state.content_keys
        if keys is None:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           "content sealing is off (--content-plaintext): this agent "
                           "holds no content keys to erase")
        found = keys.keys_of(request.tenant, request.user)
        subject = keys.subject(request.tenant, request.user)
        if not found:
            raise ApiError(grpc.StatusCode.NOT_FOUND,
                           f"no content key for user {request.user!r} in tenant "
                           f"{request.tenant!r}: nothing of theirs is readable here (never "
                           "captured readable, already erased, or expired); nothing written")
        records = self.state.records
        principal = current_principal()
        who = f"{principal.subject} ({principal.role}, token {principal.token_id})" \
            if principal is not None else "local"
        ids = [k.key_id for k in found]
        record = subject_erasure(records.log_id, int(time.time() * 1000), ids, subject,
                                 request.tenant, who, request.reason)
        seq = records.append_erasure(record, lambda: self._destroy(ids))
        note_for_access_record(erasure_seq=seq, keys=len(ids), subject_hmac=subject)
        deadline = time.monotonic() + ERASURE_DURABLE_TIMEOUT_S
        while records.durable_seq < seq and time.monotonic() < deadline:
            await records.wait_durable(seq - 1, deadline - time.monotonic())
        if records.durable_seq < seq:
            raise ApiError(grpc.StatusCode.UNAVAILABLE,
                           f"the erasure record (seq {seq}) is not durable yet: the keys go "
                           "once it is (the record log refuses writes; see its metrics)")
        return q.EraseSubjectResponse(keys_destroyed=len(ids), erasure_seq=seq,
                                      subject_hmac=subject)

    def _destroy(self, key_ids: list[str]) -> None:
        keys = self.state.content_keys
        if keys is not None:
            self.state.counters["content_keys_erased"] += keys.destroy(key_ids)
