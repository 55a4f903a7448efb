"""The management API's routes, each defined once: its HTTP method and path, the gRPC method it
stands for (whose roles, request and response message it shares) and its parameters
(http_params.py).

http_api.py serves exactly these routes and openapi.py documents exactly these, so the served
API and its OpenAPI document cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.descriptor import MethodDescriptor

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.http_params import (
    AGGREGATES,
    CONFIRM,
    ERASE,
    EVENTS,
    FILTERS,
    FINDINGS,
    LEVEL,
    PAGING,
    TRAIL_ID,
    Param,
)

PREFIX = "/api/v1"
_Q = "/vllm_audit.v1.QueryService/"
_C = "/vllm_audit.v1.ControlService/"
JSON = "application/json"
NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class Route:
    method: str
    #: Under PREFIX; `{name}` segments are the `path` parameters.
    path: str
    #: The full gRPC method it stands for (roles, request, response); "" for none.
    rpc: str
    summary: str
    path_params: Mapping[str, Param] = field(default_factory=dict)
    query: Mapping[str, Param] = field(default_factory=dict)
    #: The JSON body's fields; None: the route reads no body.
    body: Mapping[str, Param] | None = None
    media_type: str = JSON

    @property
    def name(self) -> str:
        """The gRPC method's short name (the operation's id)."""
        return self.rpc.rsplit("/", 1)[-1]

    def grpc_method(self) -> MethodDescriptor:
        service, name = self.rpc.strip("/").rsplit("/", 1)
        return q.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[-1]].methods_by_name[name]


_ID = {"id": TRAIL_ID}
#: The OpenAPI document's own route: no gRPC method, no credential.
OPENAPI_PATH = "/openapi.json"
ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", _Q + "Health", "Liveness of the agent's query API (any role)"),
    Route("GET", "/stats", _Q + "GetStats", "Ingest, drops and refusals by reason, WAL, levels"),
    Route("GET", "/trails", _Q + "ListTrails", "Trails, newest first, filtered and paged",
          query={**FILTERS, **PAGING}),
    Route("GET", "/trails/{id}", _Q + "GetTrail", "One trail, with its events paged",
          path_params=_ID, query=EVENTS),
    Route("GET", "/export", _Q + "ExportTrails",
          "The record log's trail records, one JSON record per line", query=FILTERS,
          media_type=NDJSON),
    Route("GET", "/aggregates", _Q + "GetAggregates",
          "Requests, tokens, errors and cost by tenant, user, model and day", query=AGGREGATES),
    Route("GET", "/findings", _Q + "ListFindings",
          "The detection rules' findings, newest first by window end", query=FINDINGS),
    Route("DELETE", "/trails/{id}", _C + "DeleteTrail",
          "Removes a final trail from the query store (its records stay)", path_params=_ID),
    Route("POST", "/clear", _C + "ClearTrails",
          "Removes every final trail from the query store (the record log stays)", body=CONFIRM),
    Route("PUT", "/level", _C + "SetAuditLevel", "Sets the audit level of every hook",
          body=LEVEL),
    Route("POST", "/erasures", _C + "EraseSubject",
          "Erases one user's content: destroys their content keys, writes a signed erasure "
          "record (admin)", body=ERASE),
    Route("GET", OPENAPI_PATH, "", "This document: the management API in OpenAPI 3.1"),
)
