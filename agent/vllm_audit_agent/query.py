"""QueryService (health, stats, trails) and ControlService (audit level) of the agent.

Who may call what is decided by the auth interceptor (agent/vllm_audit_agent/auth.py) before a method runs;
here the caller only narrows what it reads: a tenant-auditor sees its own tenant's trails and
nothing else, whatever filter it sends (another tenant's trail is NOT_FOUND, as a missing one).
Pages come from the trail index (agent/vllm_audit_agent/trail_index.py) in arrival order; a page token is the
position after the last trail handed out, so pages stay stable while trails arrive and go.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import grpc

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit.v1 import query_pb2_grpc

from .auth import TENANT_AUDITOR, current_principal
from .config import LEVELS
from .state import AgentState
from .trail import Trail
from .trail_index import Filter, TrailIndex

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: Serialised event bytes per GetTrail response when no event_limit is given: under gRPC's
#: default 4 MiB message cap with room for the summary.
EVENT_PAGE_BYTES = 3 << 20
#: A tenant-auditor asking for another tenant gets this (matches nothing: tenants are set).
_NO_TENANT = "\x00no-such-tenant"

Context = grpc.aio.ServicerContext[Any, Any]


def _encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s:{seq}".encode()).decode()


def _decode_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if not text.startswith("s:"):
            raise ValueError
        seq = int(text[2:])
        if seq < 0:
            raise ValueError
        return seq
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"page_token {token!r} is not a token this API returned") from None


def scoped_tenant(requested: str) -> str:
    """The tenant filter actually applied: a tenant-auditor's own tenant, always."""
    principal = current_principal()
    if principal is None or principal.role != TENANT_AUDITOR:
        return requested
    if requested and requested != principal.tenant:
        return _NO_TENANT  # asked for another tenant: nothing, not an error that confirms it
    return principal.tenant


def _visible(summary: Trail | q.TrailSummary) -> bool:
    principal = current_principal()
    return principal is None or principal.role != TENANT_AUDITOR or \
        summary.tenant == principal.tenant


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, state: AgentState, index: TrailIndex) -> None:
        self.state = state
        self.index = index

    async def Health(self, request: q.HealthRequest, context: Context) -> q.HealthResponse:
        state = self.state
        return q.HealthResponse(
            status="SERVING" if state.ready else "NOT_SERVING",
            uptime_s=time.monotonic() - state.started,
            gpu_available=state.gpu.available,
            kafka_configured=state.config.kafka_bootstrap is not None,
            kafka_connected=state.publisher.connected,
            connected_sources=len(state.sessions),
        )

    async def GetStats(self, request: q.StatsRequest, context: Context) -> q.StatsResponse:
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
            audit_level=state.level,  # type: ignore[arg-type]
        )
        levels = state.source_levels()
        response.source_levels.extend(levels)
        response.level_mismatch_sources = sum(1 for s in levels if s.mismatch)
        latest = [s.last_stats for _, s in state.latest_engine_stats() if s.last_stats]
        if latest:
            response.latest_engine_stats.CopyFrom(latest[-1])
        return response

    async def ListTrails(self, request: q.ListTrailsRequest, context: Context
                         ) -> q.ListTrailsResponse:
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"page_size must be >= 0, got {request.page_size}")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        try:
            after = _decode_token(request.page_token) if request.page_token else 0
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        f = Filter(model=request.model, user=request.user, tenant=scoped_tenant(request.tenant),
                   state=request.state, structured_only=request.structured_only,
                   client_request_id=request.client_request_id,
                   finish_reason=request.finish_reason, since_unix_ms=request.since_unix_ms,
                   until_unix_ms=request.until_unix_ms)
        page, next_seq = self.index.page(f, after, size)
        return q.ListTrailsResponse(trails=page,
                                    next_page_token=_encode_token(next_seq) if next_seq else "")

    async def GetTrail(self, request: q.GetTrailRequest, context: Context) -> q.GetTrailResponse:
        trail = self.state.trails.get(request.request_id)
        if trail is None or not _visible(trail):
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no trail for request id {request.request_id!r}")
        assert trail is not None
        total = len(trail.events)
        response = q.GetTrailResponse(summary=trail.summary, events_total=total)
        if request.include_events:
            start = request.event_offset
            if start > total:
                await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                    f"event_offset {start} is past the trail's {total} events")
            end = min(total, start + request.event_limit) if request.event_limit else total
            budget, i = EVENT_PAGE_BYTES, start
            # At least one event per page, so a page always makes progress.
            while i < end and (i == start or budget >= len(trail.events[i])):
                raw = trail.events[i]
                response.events.add().MergeFromString(raw)
                budget -= len(raw)
                i += 1
            response.next_event_offset = i if i < total else 0
        return response

    async def WatchTrails(self, request: q.WatchTrailsRequest, context: Context
                          ) -> Any:
        f = Filter(model=request.model, user=request.user, tenant=scoped_tenant(request.tenant),
                   state=request.state, structured_only=request.structured_only)
        # Registered before the replay is taken, with no await in between: every trail that
        # becomes final later is in the queue, none twice.
        watch = self.index.watch(f)
        try:
            replay = list(self.index.final(f)) if request.replay else []
            for summary in replay:
                yield q.WatchTrailsResponse(trail=summary)
            while True:
                if watch.overflowed and watch.queue.empty():
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the watch fell more than {watch.queue.maxsize} trails behind; "
                        "list what was missed with ListTrails and watch again")
                # An overflow happens only with a full queue: it is noticed once drained.
                summary = await watch.queue.get()
                yield q.WatchTrailsResponse(trail=summary)
        finally:
            self.index.unwatch(watch)


class ControlServicer(query_pb2_grpc.ControlServiceServicer):
    def __init__(self, state: AgentState) -> None:
        self.state = state

    async def SetAuditLevel(self, request: q.SetAuditLevelRequest, context: Context
                            ) -> q.SetAuditLevelResponse:
        if request.level not in pb.AuditLevel.values() or request.level == pb.AUDIT_LEVEL_UNSPECIFIED:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"level must be one of {', '.join(n.upper() for n in LEVELS)}; "
                                f"got {request.level}")
        try:
            notified = self.state.set_level(request.level)
        except OSError as exc:
            # Not persisted means not changed: a restart would silently bring the old level back.
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"could not persist the audit level: {exc}; level unchanged")
        return q.SetAuditLevelResponse(level=request.level, version=self.state.level_version,
                                       sources_notified=notified)
