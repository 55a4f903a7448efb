"""The management API as JSON on the agent's HTTP port: the same calls as the gRPC query and
control services, through the same code.

Each route stands for one gRPC method: it is authorised by the same `Gate` (gate.py) under
that method's name (one token table, one role table, the same refusal counters), runs the same
`AuditApi` call (operations.py) as the servicer, and is meta-audited into the record log like
the gRPC call (`transport: http`, the request as the proto request it was parsed into).

The routes and their parameters are defined once, in http_routes.py and http_params.py; this
module serves them and openapi.py documents them (GET /api/v1/openapi.json, OpenAPI 3.1, the
one route without a credential: it holds no audit data). In short:

    GET    /api/v1/health                       Health        (any role; not recorded)
    GET    /api/v1/stats                        GetStats
    GET    /api/v1/trails?filters&page_size&page_token   ListTrails
    GET    /api/v1/trails/{id}?events&event_offset&event_limit   GetTrail
    GET    /api/v1/export?filters               ExportTrails  (application/x-ndjson)
    GET    /api/v1/aggregates?tenant&user&model&since&until&group_by   GetAggregates
    GET    /api/v1/findings?rule&subject&subject_kind&severity&tenant&since&until&page_size
                                                ListFindings  (the detections' findings)
    DELETE /api/v1/trails/{id}                  DeleteTrail   (admin)
    POST   /api/v1/clear   {"confirm": "delete-all-trails"}   ClearTrails (admin)
    PUT    /api/v1/level   {"level": "summary"}               SetAuditLevel
    GET    /api/v1/openapi.json                 the OpenAPI document

Filters: model, user, tenant, state (a TrailState name: finished, aborted, ...), finish_reason,
since / until (ISO 8601 or unix seconds/ms, on the trail's creation time), backend (the
grammar backend), structured_only, client_request_id (alias x_request_id: the client's
X-Request-Id). An unknown or repeated parameter, a bad value, malformed JSON: 400 naming it.
Errors are `{"error": {"status", "code", "message"}}`; `code` is the gRPC status name.
Summaries are in the record form (records.py: proto field names, enums by name, 64-bit
integers as numbers); events use protobuf's JSON mapping.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.errors import ApiError
from vllm_audit_agent.api.findings import FindingsApi, NoFindings
from vllm_audit_agent.api.gate import Gate, Peer, Refused, acting_as, result_count
from vllm_audit_agent.api.http_params import from_body, from_query
from vllm_audit_agent.api.http_routes import PREFIX, ROUTES, Route
from vllm_audit_agent.api.limits import recorded_details
from vllm_audit_agent.api.openapi import document_bytes
from vllm_audit_agent.api.operations import AuditApi
from vllm_audit_agent.api.reads import QueryApi, answer
from vllm_audit_agent.api.tls import is_loopback
from vllm_audit_agent.api.tokens import Principal
from vllm_audit_agent.model.record import message_to_dict

logger = logging.getLogger("vllm_audit.agent")

HOW_TO_SEND = "an 'Authorization: Bearer <token>' header"
#: gRPC status -> HTTP status of the answer.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def error_response(status: int, code: str, message: str) -> web.Response:
    response = web.json_response({"error": {"status": status, "code": code, "message": message}},
                                 status=status, dumps=lambda v: orjson.dumps(v).decode())
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="vllm-audit"'
    return response


def _json(value: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json")


def findings_json(response: q.ListFindingsResponse) -> dict[str, Any]:
    """The finding records as JSON objects (the gRPC answer carries their bytes)."""
    return {"findings": [orjson.loads(raw) for raw in response.findings]}


def trail_json(response: q.GetTrailResponse) -> dict[str, Any]:
    out = message_to_dict(response)
    # Events carry one body each of many kinds: protobuf's mapping omits the unset ones.
    out["events"] = [json_format.MessageToDict(e, preserving_proto_field_name=True)
                     for e in response.events]
    return out


Build = Callable[[web.Request], Awaitable[Message]]
Run = Callable[[web.Request, Message], Awaitable[tuple[web.StreamResponse, int]]]


class ManagementApi:
    """`api`: the agent's AuditApi (reads and control), or a fleet service's reads alone
    (fleet/api_source.py), whose control routes answer 501: control is each agent's.
    `findings`: the detection findings (findings.py; none: the agent runs no rules)."""

    def __init__(self, api: QueryApi, gate: Gate, findings: FindingsApi | None = None) -> None:
        self.api = api
        self.gate = gate
        findings = findings or NoFindings()
        #: The gRPC method's short name -> what runs it (the route's builder made its request).
        self._runs: dict[str, Run] = {
            "Health": self._unary(lambda _: api.health()),
            "GetStats": self._unary(lambda _: api.stats()),
            "ListTrails": self._unary(api.list_trails),
            "GetTrail": self._unary(api.get_trail, trail_json),
            "ExportTrails": self._export,
            "GetAggregates": self._unary(api.aggregates),
            "ListFindings": self._unary(findings.list_findings, findings_json),
        }
        for name in CONTROL_METHODS:
            self._runs[name] = self._unary(getattr(api, CONTROL_METHODS[name])) \
                if isinstance(api, AuditApi) else _no_control

    def routes(self) -> list[web.RouteDef]:
        """Every route of the table (http_routes.py), and nothing else: not even HEAD beside
        a GET, so what is served is exactly what the OpenAPI document lists."""
        return [web.route(r.method, PREFIX + r.path,
                          self._route(r.rpc, _builder(r), self._runs[r.name]) if r.rpc
                          else _openapi, **({"allow_head": False} if r.method == "GET" else {}))
                for r in ROUTES]

    # -- the one path every route takes --------------------------------------------------------
    def _route(self, method: str, build: Build, run: Run
               ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                principal = self.gate.authorise(method, _bearer(request), HOW_TO_SEND,
                                                peer_of(request))
            except ApiError as exc:  # the credential header itself is malformed
                return self._refused(Refused("invalid_argument", exc.code, exc.message),
                                     method, request, counted=False)
            except Refused as refused:
                return self._refused(refused, method, request)
            try:
                message = await build(request)
            except ApiError as exc:  # an authenticated caller's malformed call: on record
                return self._refused(Refused("invalid_argument", exc.code, exc.message,
                                             principal.token_id), method, request, counted=False)
            try:
                self.gate.admit(principal, method, message)
            except Refused as refused:
                return self._refused(refused, method, request)
            return await self._run(principal, method, message, request, run)

        return handle

    def _refused(self, refused: Refused, method: str, request: web.Request,
                 counted: bool = True) -> web.Response:
        if not counted:
            self.gate.counters[f"auth_{refused.reason}"] += 1
        self.gate.refusal_on_record(refused, method, peer_of(request))
        return error_response(HTTP_STATUS.get(refused.code, 400), refused.code.name,
                              refused.message)

    async def _run(self, principal: Principal, method: str, message: Message,
                   request: web.Request, run: Run) -> web.StreamResponse:
        count, status, notes = 0, "UNKNOWN", None
        try:
            with acting_as(principal) as notes:
                response, count = await run(request, message)
            status = "OK"
            return response
        except ApiError as exc:
            status = exc.code.name
            return error_response(HTTP_STATUS.get(exc.code, 500), exc.code.name, exc.message)
        finally:
            self.gate.audited(principal, method, recorded_details(message), count,
                              peer_of(request), status, notes)

    # -- runners -------------------------------------------------------------------------------
    @staticmethod
    def _unary(call: Callable[[Any], Message | Awaitable[Message]],
               render: Callable[[Any], dict[str, Any]] = message_to_dict) -> Run:
        async def run(request: web.Request, message: Message) -> tuple[web.StreamResponse, int]:
            response = await answer(call(message))
            return _json(render(response)), result_count(response)

        return run

    async def _export(self, request: web.Request, message: Message
                      ) -> tuple[web.StreamResponse, int]:
        assert isinstance(message, q.ExportTrailsRequest)
        chunks = self.api.export(message)
        try:
            # A bad request fails on the first step: answered as JSON before the stream starts.
            chunk = await anext(chunks, None)
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)
            count = 0
            while chunk is not None:
                await response.write(b"".join(payload + b"\n" for payload in chunk))
                count += len(chunk)
                try:
                    chunk = await anext(chunks, None)
                except ApiError as exc:
                    # The status is sent: end the stream without its last chunk, so the client
                    # sees a broken transfer, never a complete-looking short export.
                    logger.warning("export cut short: %s", exc.message)
                    if request.transport is not None:
                        request.transport.close()
                    return response, count
            await response.write_eof()
            return response, count
        finally:
            await chunks.aclose()


#: The ControlService's methods and the AuditApi method each runs.
CONTROL_METHODS = {"DeleteTrail": "delete_trail", "ClearTrails": "clear_trails",
                   "SetAuditLevel": "set_level", "EraseSubject": "erase_subject"}


async def _no_control(request: web.Request, message: Message) -> tuple[web.StreamResponse, int]:
    raise ApiError(grpc.StatusCode.UNIMPLEMENTED,
                   "this service reads a fleet's records and controls no agent: send control "
                   "calls to the agent itself")


def _builder(route: Route) -> Build:
    """Parses a request into the gRPC method's request message: path, query, then body."""
    kind: type[Message] = getattr(q, route.grpc_method().input_type.name)

    async def build(request: web.Request) -> Message:
        message = kind()
        for name, param in route.path_params.items():
            setattr(message, param.field, param.parse(name, request.match_info[name]))
        from_query(request, message, route.query)
        if route.body is not None:
            await from_body(request, message, route.body)
        return message

    return build


async def _openapi(request: web.Request) -> web.StreamResponse:
    """The OpenAPI document (openapi.py): no credential, no record (it holds no audit data)."""
    try:
        from_query(request, q.HealthRequest(), {})  # takes no parameter
    except ApiError as exc:
        return error_response(400, exc.code.name, exc.message)
    return web.Response(body=document_bytes(), content_type="application/json")


def http_api_allowed(host: str, tls: bool, allow_insecure_remote: bool) -> str | None:
    """None when the API may be served on an HTTP listener on `host`, else why not.

    Without TLS on the HTTP port (`tls`: --http-tls) bearer tokens and audit records would
    cross the network in the clear, which the gRPC listener refuses too
    (auth.check_listener). /metrics and the probes carry no audit data and stay served."""
    if tls or is_loopback(host) or allow_insecure_remote:
        return None
    return (f"the management API is not served on the HTTP listener {host!r}: it is reachable "
            "beyond this machine without TLS, so tokens and audit records would cross the "
            "network in the clear. Serve the port over TLS (--http-tls), listen on 127.0.0.1, "
            "or pass --allow-insecure-remote (e.g. behind a service mesh that encrypts)")


def disabled_routes(reason: str) -> list[web.RouteDef]:
    """Every /api/ request answered 404 with the reason (never a silent hang or a guess)."""

    async def refuse(request: web.Request) -> web.StreamResponse:
        return error_response(404, "NOT_FOUND", reason)

    return [web.route("*", PREFIX + "/{tail:.*}", refuse)]


def peer_of(request: web.Request) -> Peer:
    """The caller's address and, over mutual TLS, its certificate's subject common name."""
    identity = ""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if isinstance(cert, dict):
        identity = ",".join(value for rdn in cert.get("subject", ()) for key, value in rdn
                            if key == "commonName")
    return Peer("http", request.remote or "", identity)


def _bearer(request: web.Request) -> str | None:
    """The bearer token; a request with more than one Authorization header is refused (400):
    which one would count is exactly what an attacker would like to choose."""
    if len(request.headers.getall("Authorization", [])) > 1:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       "more than one Authorization header; send exactly one")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
