"""QueryService (health, stats, trails) and ControlService (audit level) of the agent."""

from __future__ import annotations

import base64
import time
from typing import Any

import grpc
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit.v1 import query_pb2_grpc

from .state import AgentState

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def _decode_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if not text.startswith("o:"):
            raise ValueError
        offset = int(text[2:])
        if offset < 0:
            raise ValueError
        return offset
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"page_token {token!r} is not a token this API returned") from None


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, state: AgentState) -> None:
        self.state = state

    async def Health(self, request: q.HealthRequest, context: grpc.aio.ServicerContext[Any, Any]
                     ) -> q.HealthResponse:
        state = self.state
        return q.HealthResponse(
            status="SERVING" if state.ready else "NOT_SERVING",
            uptime_s=time.monotonic() - state.started,
            gpu_available=state.gpu.available,
            kafka_configured=state.config.kafka_bootstrap is not None,
            kafka_connected=state.publisher.connected,
            connected_sources=len(state.sessions),
        )

    async def GetStats(self, request: q.StatsRequest, context: grpc.aio.ServicerContext[Any, Any]
                       ) -> q.StatsResponse:
        state = self.state
        trails = state.trails
        response = q.StatsResponse(
            batches_ingested=state.counters["batches"],
            events_ingested=state.counters["events"],
            duplicate_batches=state.counters["duplicate_batches"],
            hook_dropped_by_reason=dict(state.hook_dropped),
            trails_active=trails.active_count(),
            trails_finished=sum(trails.finished_by_state.values()),
            trails_evicted=trails.counters["evicted_final"] + trails.counters["evicted_active"],
            trail_store_bytes=trails.bytes,
            wal_bytes=state.wal.size,
            records_published=state.publisher.counters["published"],
            agent_dropped_by_reason=state.agent_drops(),
            audit_level=state.level,  # type: ignore[arg-type]
        )
        latest = [s.last_stats for _, s in state.latest_engine_stats() if s.last_stats]
        if latest:
            response.latest_engine_stats.CopyFrom(latest[-1])
        return response

    async def ListTrails(self, request: q.ListTrailsRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> q.ListTrailsResponse:
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"page_size must be >= 0, got {request.page_size}")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        try:
            offset = _decode_token(request.page_token) if request.page_token else 0
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        matches = [t.summary for t in self.state.trails.trails() if _matches(t.summary, request)]
        # Oldest first, so pages stay stable while new trails arrive at the end.
        matches.sort(key=lambda s: (s.created_unix_ms, s.request_id))
        page = matches[offset:offset + size]
        token = _encode_token(offset + size) if offset + size < len(matches) else ""
        return q.ListTrailsResponse(trails=page, next_page_token=token)

    async def GetTrail(self, request: q.GetTrailRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> q.GetTrailResponse:
        trail = self.state.trails.get(request.request_id)
        if trail is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no trail for request id {request.request_id!r}")
        assert trail is not None
        response = q.GetTrailResponse(summary=trail.summary)
        if request.include_events:
            for raw in trail.events:
                response.events.add().MergeFromString(raw)
        return response


def _matches(s: q.TrailSummary, r: q.ListTrailsRequest) -> bool:
    return (
        (not r.model or s.model == r.model)
        and (not r.user or s.user == r.user)
        and (not r.client_request_id or s.client_request_id == r.client_request_id)
        and (not r.state or s.state == r.state)
        and (not r.finish_reason or s.finish_reason == r.finish_reason)
        and (not r.since_unix_ms or s.created_unix_ms >= r.since_unix_ms)
        and (not r.until_unix_ms or s.created_unix_ms < r.until_unix_ms)
        and (not r.structured_only or bool(s.grammar_backend))
    )


class ControlServicer(query_pb2_grpc.ControlServiceServicer):
    def __init__(self, state: AgentState) -> None:
        self.state = state

    async def SetAuditLevel(self, request: q.SetAuditLevelRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> q.SetAuditLevelResponse:
        if request.level not in pb.AuditLevel.values() or request.level == pb.AUDIT_LEVEL_UNSPECIFIED:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"level must be OFF, SUMMARY, FULL or FULL_WITH_ALLOWED_SETS; "
                                f"got {request.level}")
        notified = self.state.set_level(request.level)
        return q.SetAuditLevelResponse(level=request.level, version=self.state.level_version,
                                       sources_notified=notified)
