"""The query calls that read trails, once, for every store behind the API: `TrailReads`.

The agent's `AuditApi` (operations.py) and the fleet's API (fleet/api_source.py) are both
TrailReads over their own `TrailSource` (trail_source.py). Here the caller only narrows what
it reads (scope.py: a tenant-auditor sees its own tenant); who may call what was decided
before (gate.py). A page token is the source's cursor sealed to the caller and its filters
(page_tokens.py), so it tells its holder nothing and serves no other caller or filter.
Every method but `export` and `watch` is synchronous: a page is built without awaiting.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Protocol, TypeVar

import grpc

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.errors import ApiError
from vllm_audit_agent.api.gate import current_principal
from vllm_audit_agent.api.limits import DEFAULT_PAGE_SIZE
from vllm_audit_agent.api.limits import check as check_limits
from vllm_audit_agent.api.page_tokens import PageTokens
from vllm_audit_agent.api.scope import caller_tenant, filter_of
from vllm_audit_agent.api.trail_source import TrailSource
from vllm_audit_agent.api.usage import PriceTable, aggregates, check_group_by
from vllm_audit_agent.trails.index import record_kind

Resp = TypeVar("Resp")
#: Serialised event bytes per GetTrail response when no event_limit is given: under gRPC's
#: default 4 MiB message cap with room for the summary.
EVENT_PAGE_BYTES = 3 << 20


class TrailReads:
    def __init__(self, source: TrailSource, page_tokens: PageTokens | None = None,
                 prices: PriceTable | None = None) -> None:
        self.source = source
        self.page_tokens = page_tokens or PageTokens()
        self.prices = prices or PriceTable()

    def list_trails(self, request: q.ListTrailsRequest) -> q.ListTrailsResponse:
        check_limits(request)  # page_size in range (the interceptors checked it too)
        principal = current_principal()
        caller = principal.token_id if principal is not None else ""
        after = self.page_tokens.open_cursor(request.page_token, caller, request) \
            if request.page_token else b""
        page, cursor = self.source.page(filter_of(request), after,
                                        request.page_size or DEFAULT_PAGE_SIZE)
        token = self.page_tokens.seal_cursor(cursor, caller, request) if cursor else ""
        return q.ListTrailsResponse(trails=page, next_page_token=token)

    def get_trail(self, request: q.GetTrailRequest) -> q.GetTrailResponse:
        trail = self.source.get(request.request_id, caller_tenant())
        if trail is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND,
                           f"no trail for request id {request.request_id!r}")
        events = trail.events
        total = len(events)
        response = q.GetTrailResponse(summary=trail.summary, events_total=total)
        if request.include_events:
            start = request.event_offset
            if start > total:
                raise ApiError(grpc.StatusCode.OUT_OF_RANGE,
                               f"event_offset {start} is past the trail's {total} events")
            end = min(total, start + request.event_limit) if request.event_limit else total
            budget, i = EVENT_PAGE_BYTES, start
            # At least one event per page, so a page always makes progress.
            while i < end and (i == start or budget >= len(events[i])):
                raw = events[i]
                response.events.add().MergeFromString(raw)
                budget -= len(raw)
                i += 1
            response.next_event_offset = i if i < total else 0
        return response

    def export(self, request: q.ExportTrailsRequest) -> AsyncGenerator[list[bytes], None]:
        """Chunks of the matching request records, oldest first, each exactly as stored."""
        return self.source.export(filter_of(request))

    async def watch(self, request: q.WatchTrailsRequest) -> AsyncIterator[q.WatchTrailsResponse]:
        """The matching records as they are stored (after the stored ones, with `replay`);
        ApiError(RESOURCE_EXHAUSTED) when the caller fell too far behind."""
        source = self.source
        f = filter_of(request)
        # Registered before the replay is taken, with no await in between: every record
        # written later is in the queue, none twice.
        watch = source.watch(f)
        try:
            replay = list(source.final(f)) if request.replay else []
            for summary in replay:
                yield q.WatchTrailsResponse(trail=source.shown(summary),
                                            # ignore[arg-type]: an int for a contract enum
                                            kind=record_kind(summary.revision))  # type: ignore[arg-type]
            while True:
                if watch.overflowed and watch.queue.empty():
                    raise ApiError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the watch fell more than {watch.queue.maxsize} events behind; "
                        "list what was missed with ListTrails and watch again")
                # An overflow happens only with a full queue: it is noticed once drained.
                kind, summary = await watch.queue.get()
                shown = source.shown(summary)
                # the ignore[arg-type] below: an int for a contract enum (stubs want its ValueType)
                yield q.WatchTrailsResponse(trail=shown, kind=kind)  # type: ignore[arg-type]
        finally:
            source.unwatch(watch)

    def aggregates(self, request: q.AggregatesRequest) -> q.AggregatesResponse:
        group_by = check_group_by(request.group_by)
        f = filter_of(request)
        keys = group_by if "model" in group_by else (*group_by, "model")
        return aggregates(self.source.usage(f, keys), group_by, self.prices)


class QueryApi(Protocol):
    """What the QueryService and the HTTP API's read routes call: `TrailReads` plus the
    service's own health and stats (the agent's AuditApi; the fleet's FleetApi, whose calls
    are awaitables: its store is queried in a worker thread)."""

    def health(self) -> q.HealthResponse: ...
    def stats(self) -> q.StatsResponse | Awaitable[q.StatsResponse]: ...
    def list_trails(self, request: q.ListTrailsRequest
                    ) -> q.ListTrailsResponse | Awaitable[q.ListTrailsResponse]: ...
    def get_trail(self, request: q.GetTrailRequest
                  ) -> q.GetTrailResponse | Awaitable[q.GetTrailResponse]: ...
    def export(self, request: q.ExportTrailsRequest) -> AsyncGenerator[list[bytes], None]: ...
    def watch(self, request: q.WatchTrailsRequest) -> AsyncIterator[q.WatchTrailsResponse]: ...
    def aggregates(self, request: q.AggregatesRequest
                   ) -> q.AggregatesResponse | Awaitable[q.AggregatesResponse]: ...


async def answer(result: Resp | Awaitable[Resp]) -> Resp:
    """A call's answer, awaited when the call returned an awaitable (the fleet's)."""
    if inspect.isawaitable(result):
        return await result
    return result
