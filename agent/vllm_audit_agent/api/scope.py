"""What a caller may read: the tenant scope of a tenant-auditor, applied to every filter.

One place for both stores behind the query API (the agent's trails in memory, a fleet's
store): a tenant-auditor sees its own tenant's trails and nothing else, whatever filter it
sends (another tenant's trail is NOT_FOUND, as a missing one; another tenant's filter matches
nothing rather than failing, which would confirm the tenant exists).
"""

from __future__ import annotations

from typing import Any

import grpc

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.errors import ApiError
from vllm_audit_agent.api.gate import current_principal
from vllm_audit_agent.api.tokens import TENANT_AUDITOR
from vllm_audit_agent.trails.index import Filter

#: A tenant-auditor asking for another tenant gets this (matches nothing: tenants are set).
NO_TENANT = "\x00no-such-tenant"
#: The record fields the export's filter reads (records.py: the summary's field names, enums
#: as their names).
STATE_NAMES = {v.number: v.name for v in q.TrailState.DESCRIPTOR.values}


def scoped_tenant(requested: str) -> str:
    """The tenant filter actually applied: a tenant-auditor's own tenant, always."""
    principal = current_principal()
    if principal is None or principal.role != TENANT_AUDITOR:
        return requested
    if requested and requested != principal.tenant:
        return NO_TENANT  # asked for another tenant: nothing, not an error that confirms it
    return principal.tenant


def caller_tenant() -> str | None:
    """The one tenant the caller may read (a tenant-auditor's), None for every tenant."""
    principal = current_principal()
    if principal is None or principal.role != TENANT_AUDITOR:
        return None
    return principal.tenant


def visible(summary: q.TrailSummary) -> bool:
    tenant = caller_tenant()
    return tenant is None or summary.tenant == tenant


def filter_of(request: q.ListTrailsRequest | q.ExportTrailsRequest | q.WatchTrailsRequest
              | q.AggregatesRequest) -> Filter:
    """The filter a request asks for, with the caller's tenant scope applied."""
    tenant = scoped_tenant(request.tenant)
    if isinstance(request, q.AggregatesRequest):
        _check_window(request)
        return Filter(model=request.model, user=request.user, tenant=tenant,
                      since_unix_ms=request.since_unix_ms, until_unix_ms=request.until_unix_ms)
    common = {"model": request.model, "user": request.user, "tenant": tenant,
              "state": request.state, "structured_only": request.structured_only}
    if isinstance(request, q.WatchTrailsRequest):
        # the ignore[arg-type] below: an int for a contract enum (stubs want its ValueType)
        return Filter(**common)  # type: ignore[arg-type]
    _check_window(request)
    # the ignore[arg-type] below: an int for a contract enum (stubs want its ValueType)
    return Filter(**common, client_request_id=request.client_request_id,  # type: ignore[arg-type]
                  finish_reason=request.finish_reason, since_unix_ms=request.since_unix_ms,
                  until_unix_ms=request.until_unix_ms, grammar_backend=request.grammar_backend)


def _check_window(request: q.ListTrailsRequest | q.ExportTrailsRequest | q.AggregatesRequest
                  ) -> None:
    if request.since_unix_ms < 0 or request.until_unix_ms < 0:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       "since_unix_ms and until_unix_ms must be >= 0 (unix milliseconds)")


def record_matches(f: Filter, record: dict[str, Any]) -> bool:
    """`Filter.matches` on a stored record (the summary's fields, enums by name)."""
    created = int(record.get("created_unix_ms") or 0)
    backend = str(record.get("grammar_backend") or "")
    return (
        (not f.model or record.get("model") == f.model)
        and (not f.user or record.get("user") == f.user)
        and (not f.tenant or record.get("tenant") == f.tenant)
        and (not f.state or record.get("state") == STATE_NAMES.get(f.state))
        and (not f.client_request_id or record.get("client_request_id") == f.client_request_id)
        and (not f.finish_reason or record.get("finish_reason") == f.finish_reason)
        and (not f.since_unix_ms or created >= f.since_unix_ms)
        and (not f.until_unix_ms or created < f.until_unix_ms)
        and (not f.structured_only or bool(backend))
        and (not f.grammar_backend or backend == f.grammar_backend)
    )
