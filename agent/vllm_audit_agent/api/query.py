"""QueryService (health, stats, trails, export, watch, aggregates) and ControlService (audit
level, delete, clear) of the agent: the gRPC face of operations.py. The fleet service serves
the same QueryService over its store (fleet/api_source.py).

Who may call what is decided by the auth interceptor (api/auth_interceptor.py) before a method runs; what a
call does is `AuditApi`'s (operations.py), shared with the HTTP management API, so the two
transports cannot drift. Here an `ApiError` becomes the call's status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from vllm_audit.v1 import query_pb2 as q
from vllm_audit.v1 import query_pb2_grpc
from vllm_audit_agent.api.errors import ApiError
from vllm_audit_agent.api.findings import FindingsApi, NoFindings
from vllm_audit_agent.api.operations import AuditApi
from vllm_audit_agent.api.reads import QueryApi, answer

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def _run(context: Context, call: Callable[[Req], Resp | Awaitable[Resp]], request: Req
               ) -> Resp:
    try:
        return await answer(call(request))
    except ApiError as exc:
        await context.abort(exc.code, exc.message)
        raise  # pragma: no cover - abort raised


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    """`api`: the agent's AuditApi, or a fleet's (the same reads over its store);
    `findings`: its detection findings (findings.py; none: the agent runs no rules)."""

    def __init__(self, api: QueryApi, findings: FindingsApi | None = None) -> None:
        self.api = api
        self.findings: FindingsApi = findings or NoFindings()

    async def Health(self, request: q.HealthRequest, context: Context) -> q.HealthResponse:
        return self.api.health()

    async def GetStats(self, request: q.StatsRequest, context: Context) -> q.StatsResponse:
        return await answer(self.api.stats())

    async def ListTrails(self, request: q.ListTrailsRequest, context: Context
                         ) -> q.ListTrailsResponse:
        return await _run(context, self.api.list_trails, request)

    async def GetTrail(self, request: q.GetTrailRequest, context: Context) -> q.GetTrailResponse:
        return await _run(context, self.api.get_trail, request)

    async def ExportTrails(self, request: q.ExportTrailsRequest, context: Context
                           ) -> AsyncIterator[q.ExportTrailsResponse]:
        try:
            async for chunk in self.api.export(request):
                yield q.ExportTrailsResponse(records=chunk)
        except ApiError as exc:
            await context.abort(exc.code, exc.message)

    async def WatchTrails(self, request: q.WatchTrailsRequest, context: Context
                          ) -> AsyncIterator[q.WatchTrailsResponse]:
        try:
            async for response in self.api.watch(request):
                yield response
        except ApiError as exc:
            await context.abort(exc.code, exc.message)

    async def GetAggregates(self, request: q.AggregatesRequest, context: Context
                            ) -> q.AggregatesResponse:
        return await _run(context, self.api.aggregates, request)

    async def ListFindings(self, request: q.ListFindingsRequest, context: Context
                           ) -> q.ListFindingsResponse:
        return await _run(context, self.findings.list_findings, request)


class ControlServicer(query_pb2_grpc.ControlServiceServicer):
    def __init__(self, api: AuditApi) -> None:
        self.api = api

    async def SetAuditLevel(self, request: q.SetAuditLevelRequest, context: Context
                            ) -> q.SetAuditLevelResponse:
        return await _run(context, self.api.set_level, request)

    async def DeleteTrail(self, request: q.DeleteTrailRequest, context: Context
                          ) -> q.DeleteTrailResponse:
        return await _run(context, self.api.delete_trail, request)

    async def EraseSubject(self, request: q.EraseSubjectRequest, context: Context
                           ) -> q.EraseSubjectResponse:
        return await _run(context, self.api.erase_subject, request)

    async def ClearTrails(self, request: q.ClearTrailsRequest, context: Context
                          ) -> q.ClearTrailsResponse:
        return await _run(context, self.api.clear_trails, request)
