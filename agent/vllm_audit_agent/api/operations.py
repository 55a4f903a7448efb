"""What the query, control and management calls do, once, for both transports.

The gRPC servicers (query.py) and the HTTP management API (http_api.py) translate their
requests into the proto request messages, call `AuditApi`, and translate its answer or its
`ApiError` (a gRPC status code and a message; http_api.py maps the code to an HTTP status).
Who may call what was decided before (gate.py `Gate`); here the caller only narrows what it
reads: a tenant-auditor sees its own tenant's trails and nothing else, whatever filter it
sends (another tenant's trail is NOT_FOUND, as a missing one).

Pages come from the trail index (trails/index.py) newest first; a page token is the position
of the last trail handed out, sealed to the caller and its filters (page_tokens.py), so
pages stay stable while trails arrive and go and a token tells its holder nothing. Every method
but `export` is synchronous: a page is built without awaiting, so the index cannot change
under it.

Delete and clear act on the query store and its index only: the record log stays append-only
(it expires by retention alone), so `export` (which reads the record log) still returns a
deleted trail's records, and `verify` still passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Generator, Iterator
from typing import Any

import grpc
import orjson

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.errors import ApiError
from vllm_audit_agent.api.gate import current_principal, note_for_access_record
from vllm_audit_agent.api.limits import DEFAULT_PAGE_SIZE
from vllm_audit_agent.api.limits import check as check_limits
from vllm_audit_agent.api.page_tokens import PageTokens
from vllm_audit_agent.api.tokens import TENANT_AUDITOR
from vllm_audit_agent.config import LEVELS
from vllm_audit_agent.records.chain import RECORD_TYPE_REQUEST
from vllm_audit_agent.state import AgentState
from vllm_audit_agent.trails.index import Filter, TrailIndex
from vllm_audit_agent.trails.store import TrailOpen

#: Serialised event bytes per GetTrail response when no event_limit is given: under gRPC's
#: default 4 MiB message cap with room for the summary.
EVENT_PAGE_BYTES = 3 << 20
#: What ClearTrailsRequest.confirm must say: clearing the query store is never an accident.
CLEAR_CONFIRMATION = "delete-all-trails"
#: Records per export chunk (one gRPC message / one write of the HTTP stream), and records
#: scanned per step of the export's reader thread (bounds how long one step holds a thread).
EXPORT_CHUNK_RECORDS = 500
EXPORT_CHUNK_BYTES = 1 << 20  # well under gRPC's default 4 MiB message cap
EXPORT_SCAN_RECORDS = 20_000
#: A tenant-auditor asking for another tenant gets this (matches nothing: tenants are set).
_NO_TENANT = "\x00no-such-tenant"
#: The record fields the export's filter reads (records.py: the summary's field names, enums
#: as their names).
_STATE_NAMES = {v.number: v.name for v in q.TrailState.DESCRIPTOR.values}


def scoped_tenant(requested: str) -> str:
    """The tenant filter actually applied: a tenant-auditor's own tenant, always."""
    principal = current_principal()
    if principal is None or principal.role != TENANT_AUDITOR:
        return requested
    if requested and requested != principal.tenant:
        return _NO_TENANT  # asked for another tenant: nothing, not an error that confirms it
    return principal.tenant


def visible(summary: q.TrailSummary) -> bool:
    principal = current_principal()
    return principal is None or principal.role != TENANT_AUDITOR or \
        summary.tenant == principal.tenant


def filter_of(request: q.ListTrailsRequest | q.ExportTrailsRequest | q.WatchTrailsRequest
              ) -> Filter:
    """The filter a request asks for, with the caller's tenant scope applied."""
    common = {"model": request.model, "user": request.user,
              "tenant": scoped_tenant(request.tenant), "state": request.state,
              "structured_only": request.structured_only}
    if isinstance(request, q.WatchTrailsRequest):
        # the ignore[arg-type] below: an int for a contract enum (stubs want its ValueType)
        return Filter(**common)  # type: ignore[arg-type]
    if request.since_unix_ms < 0 or request.until_unix_ms < 0:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       "since_unix_ms and until_unix_ms must be >= 0 (unix milliseconds)")
    # the ignore[arg-type] below: an int for a contract enum (stubs want its ValueType)
    return Filter(**common, client_request_id=request.client_request_id,  # type: ignore[arg-type]
                  finish_reason=request.finish_reason, since_unix_ms=request.since_unix_ms,
                  until_unix_ms=request.until_unix_ms, grammar_backend=request.grammar_backend)


def record_matches(f: Filter, record: dict[str, Any]) -> bool:
    """`Filter.matches` on a stored record (the summary's fields, enums by name)."""
    created = int(record.get("created_unix_ms") or 0)
    backend = str(record.get("grammar_backend") or "")
    return (
        (not f.model or record.get("model") == f.model)
        and (not f.user or record.get("user") == f.user)
        and (not f.tenant or record.get("tenant") == f.tenant)
        and (not f.state or record.get("state") == _STATE_NAMES.get(f.state))
        and (not f.client_request_id or record.get("client_request_id") == f.client_request_id)
        and (not f.finish_reason or record.get("finish_reason") == f.finish_reason)
        and (not f.since_unix_ms or created >= f.since_unix_ms)
        and (not f.until_unix_ms or created < f.until_unix_ms)
        and (not f.structured_only or bool(backend))
        and (not f.grammar_backend or backend == f.grammar_backend)
    )


class AuditApi:
    def __init__(self, state: AgentState, index: TrailIndex,
                 page_tokens: PageTokens | None = None) -> None:
        self.state = state
        self.index = index
        self.page_tokens = page_tokens or PageTokens()

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

    def list_trails(self, request: q.ListTrailsRequest) -> q.ListTrailsResponse:
        check_limits(request)  # page_size in range (the interceptors checked it too)
        principal = current_principal()
        caller = principal.token_id if principal is not None else ""
        after = self.page_tokens.open(request.page_token, caller, request) \
            if request.page_token else 0
        page, next_seq = self.index.page(filter_of(request), after,
                                         request.page_size or DEFAULT_PAGE_SIZE)
        token = self.page_tokens.seal(next_seq, caller, request) if next_seq else ""
        return q.ListTrailsResponse(trails=page, next_page_token=token)

    def get_trail(self, request: q.GetTrailRequest) -> q.GetTrailResponse:
        trail = self.state.trails.get(request.request_id)
        if trail is None or not visible(trail.summary):
            raise ApiError(grpc.StatusCode.NOT_FOUND,
                           f"no trail for request id {request.request_id!r}")
        total = len(trail.events)
        response = q.GetTrailResponse(summary=trail.summary, events_total=total)
        if request.include_events:
            start = request.event_offset
            if start > total:
                raise ApiError(grpc.StatusCode.OUT_OF_RANGE,
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

    async def export(self, request: q.ExportTrailsRequest) -> AsyncGenerator[list[bytes], None]:
        """Chunks of the matching request records of the record log, oldest first, each
        exactly as stored. The log is read in a worker thread a step at a time (the WAL's
        reader copes with the writer appending meanwhile), up to what was durable when the
        export began."""
        f = filter_of(request)
        records = self.state.records
        upto = records.durable_seq
        scan = _scan(records.wal.replay(), f, upto)
        try:
            while True:
                try:
                    chunk = await asyncio.to_thread(next, scan, None)
                except OSError as exc:  # e.g. retention deleted a segment as it was opened
                    raise ApiError(grpc.StatusCode.UNAVAILABLE,
                                   f"the record log could not be read ({exc}); retry the "
                                   "export") from None
                if chunk is None:
                    return
                if chunk:
                    yield chunk
        finally:
            # Cancelled while the thread is inside the generator: it is dropped when done.
            with contextlib.suppress(ValueError):
                scan.close()

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


def _scan(payloads: Iterator[tuple[int, bytes]], f: Filter, upto: int
          ) -> Generator[list[bytes], None, None]:
    """Yields chunks of matching request payloads; an empty chunk after a long stretch
    without a match, so each step of the reader thread stays short."""
    chunk: list[bytes] = []
    scanned = size = 0
    try:
        for _, payload in payloads:
            record = orjson.loads(payload)
            if int(record.get("seq", 0)) > upto:
                break
            scanned += 1
            if record.get("type") == RECORD_TYPE_REQUEST and record_matches(f, record):
                chunk.append(payload)
                size += len(payload)
            if len(chunk) >= EXPORT_CHUNK_RECORDS or size >= EXPORT_CHUNK_BYTES or \
                    scanned >= EXPORT_SCAN_RECORDS:
                yield chunk
                chunk, scanned, size = [], 0, 0
        if chunk:
            yield chunk
    finally:
        close = getattr(payloads, "close", None)
        if close is not None:
            close()
