"""The management API as JSON on the agent's HTTP port: the same calls as the gRPC query and
control services, through the same code.

Each route stands for one gRPC method: it is authorised by the same `Gate` (gate.py) under
that method's name (one token table, one role table, the same refusal counters), runs the same
`AuditApi` call (operations.py) as the servicer, and is meta-audited into the record log like
the gRPC call (`transport: http`, the request as the proto request it was parsed into).

    GET    /api/v1/health                       Health        (any role; not recorded)
    GET    /api/v1/stats                        GetStats
    GET    /api/v1/trails?filters&page_size&page_token   ListTrails
    GET    /api/v1/trails/{id}?events&event_offset&event_limit   GetTrail
    GET    /api/v1/export?filters               ExportTrails  (application/x-ndjson)
    DELETE /api/v1/trails/{id}                  DeleteTrail   (admin)
    POST   /api/v1/clear   {"confirm": "delete-all-trails"}   ClearTrails (admin)
    PUT    /api/v1/level   {"level": "summary"}               SetAuditLevel

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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
import orjson
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.errors import ApiError
from vllm_audit_agent.api.gate import Gate, Peer, Refused, acting_as, result_count
from vllm_audit_agent.api.limits import recorded_details
from vllm_audit_agent.api.operations import AuditApi
from vllm_audit_agent.api.tls import is_loopback
from vllm_audit_agent.api.tokens import Principal
from vllm_audit_agent.config import parse_level
from vllm_audit_agent.model.record import message_to_dict
from vllm_audit_agent.records.export import parse_time

logger = logging.getLogger("vllm_audit.agent")

PREFIX = "/api/v1"
_Q = "/vllm_audit.v1.QueryService/"
_C = "/vllm_audit.v1.ControlService/"
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
    grpc.StatusCode.UNAVAILABLE: 503,
}
_STATES = {v.name[len("TRAIL_STATE_"):].lower(): v.number
           for v in q.TrailState.DESCRIPTOR.values if v.number}
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


INT32_MAX = 2**31 - 1


def _bad(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


# -- parameter parsers: (name, text) -> value; each raises ApiError naming the parameter --------
def _text(name: str, text: str) -> str:
    return text


def _int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _bad(f"{name}={text!r} is not an integer") from None
    if value < 0:
        raise _bad(f"{name} must be >= 0, got {value}")
    if value > INT32_MAX:  # every integer parameter is an int32 or uint32 field
        raise _bad(f"{name} must be <= {INT32_MAX}, got {value}")
    return value


def _bool(name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise _bad(f"{name}={text!r} is not a boolean (true or false)")


def _time(name: str, text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise _bad(f"{name}: {exc}") from None


def _state(name: str, text: str) -> int:
    key = text.strip().lower().removeprefix("trail_state_")
    if key not in _STATES:
        raise _bad(f"{name}={text!r} is not one of {', '.join(_STATES)}")
    return _STATES[key]


Parser = Callable[[str, str], Any]
#: Query parameter -> (proto field, parser).
FILTERS: Mapping[str, tuple[str, Parser]] = {
    "model": ("model", _text), "user": ("user", _text), "tenant": ("tenant", _text),
    "state": ("state", _state), "finish_reason": ("finish_reason", _text),
    "since": ("since_unix_ms", _time), "until": ("until_unix_ms", _time),
    "backend": ("grammar_backend", _text), "structured_only": ("structured_only", _bool),
    "client_request_id": ("client_request_id", _text),
    "x_request_id": ("client_request_id", _text),
}
PAGING: Mapping[str, tuple[str, Parser]] = {
    "page_size": ("page_size", _int), "page_token": ("page_token", _text)}
EVENTS: Mapping[str, tuple[str, Parser]] = {
    "events": ("include_events", _bool), "event_offset": ("event_offset", _int),
    "event_limit": ("event_limit", _int)}


def from_query(request: web.Request, message: Message,
               known: Mapping[str, tuple[str, Parser]]) -> Message:
    """Fills `message` from the query string; refuses what it does not know."""
    seen: set[str] = set()
    for name, text in request.query.items():
        if name not in known:
            allowed = ", ".join(known) or "none"
            raise _bad(f"unknown query parameter {name!r} for {request.method} {request.path} "
                       f"(known: {allowed})")
        field, parse = known[name]
        if field in seen:
            raise _bad(f"query parameter {name!r} given more than once")
        seen.add(field)
        setattr(message, field, parse(name, text))
    return message


async def json_body(request: web.Request, known: frozenset[str]) -> dict[str, Any]:
    """The request's JSON object; refuses malformed JSON, a non-object and unknown keys."""
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise _bad(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - known)
    if unknown:
        raise _bad(f"unknown field(s) {unknown} in the request body (known: {sorted(known)})")
    return body


def error_response(status: int, code: str, message: str) -> web.Response:
    response = web.json_response({"error": {"status": status, "code": code, "message": message}},
                                 status=status, dumps=lambda v: orjson.dumps(v).decode())
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="vllm-audit"'
    return response


def _json(value: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json")


def trail_json(response: q.GetTrailResponse) -> dict[str, Any]:
    out = message_to_dict(response)
    # Events carry one body each of many kinds: protobuf's mapping omits the unset ones.
    out["events"] = [json_format.MessageToDict(e, preserving_proto_field_name=True)
                     for e in response.events]
    return out


Build = Callable[[web.Request], Awaitable[Message]]
Run = Callable[[web.Request, Message], Awaitable[tuple[web.StreamResponse, int]]]


class ManagementApi:
    def __init__(self, api: AuditApi, gate: Gate) -> None:
        self.api = api
        self.gate = gate

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PREFIX + "/health", self._route(_Q + "Health", self._empty(q.HealthRequest),
                                                    self._unary(lambda _: self.api.health()))),
            web.get(PREFIX + "/stats", self._route(_Q + "GetStats", self._empty(q.StatsRequest),
                                                   self._unary(lambda _: self.api.stats()))),
            web.get(PREFIX + "/trails", self._route(
                _Q + "ListTrails", self._query(q.ListTrailsRequest, {**FILTERS, **PAGING}),
                # the ignore[arg-type] below: each handler takes its own request type
                self._unary(self.api.list_trails))),  # type: ignore[arg-type]
            web.get(PREFIX + "/trails/{id}", self._route(
                _Q + "GetTrail", self._trail_query, self._unary(
                    # the ignore[arg-type] below: each handler takes its own request type
                    self.api.get_trail, trail_json))),  # type: ignore[arg-type]
            web.get(PREFIX + "/export", self._route(
                _Q + "ExportTrails", self._query(q.ExportTrailsRequest, FILTERS), self._export)),
            web.delete(PREFIX + "/trails/{id}", self._route(
                _C + "DeleteTrail", self._delete_request,
                # the ignore[arg-type] below: each handler takes its own request type
                self._unary(self.api.delete_trail))),  # type: ignore[arg-type]
            web.post(PREFIX + "/clear", self._route(
                _C + "ClearTrails", self._clear_request,
                # the ignore[arg-type] below: each handler takes its own request type
                self._unary(self.api.clear_trails))),  # type: ignore[arg-type]
            web.put(PREFIX + "/level", self._route(
                _C + "SetAuditLevel", self._level_request,
                # the ignore[arg-type] below: each handler takes its own request type
                self._unary(self.api.set_level))),  # type: ignore[arg-type]
        ]

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

    # -- request builders ----------------------------------------------------------------------
    @staticmethod
    def _empty(kind: type[Message]) -> Build:
        async def build(request: web.Request) -> Message:
            return from_query(request, kind(), {})

        return build

    @staticmethod
    def _query(kind: type[Message], known: Mapping[str, tuple[str, Parser]]) -> Build:
        async def build(request: web.Request) -> Message:
            return from_query(request, kind(), known)

        return build

    @staticmethod
    async def _trail_query(request: web.Request) -> Message:
        message = q.GetTrailRequest(request_id=request.match_info["id"])
        return from_query(request, message, EVENTS)

    @staticmethod
    async def _delete_request(request: web.Request) -> Message:
        return from_query(request, q.DeleteTrailRequest(request_id=request.match_info["id"]),
                          {})

    @staticmethod
    async def _clear_request(request: web.Request) -> Message:
        from_query(request, q.ClearTrailsRequest(), {})
        body = await json_body(request, frozenset({"confirm"}))
        confirm = body.get("confirm", "")
        if not isinstance(confirm, str):
            raise _bad(f"confirm must be a string, got {type(confirm).__name__}")
        return q.ClearTrailsRequest(confirm=confirm)

    @staticmethod
    async def _level_request(request: web.Request) -> Message:
        from_query(request, q.SetAuditLevelRequest(), {})
        body = await json_body(request, frozenset({"level"}))
        level = body.get("level")
        if not isinstance(level, str):
            raise _bad('the body needs "level": a level name (e.g. "summary")')
        try:
            # the ignore[arg-type] below: each handler takes its own request type
            return q.SetAuditLevelRequest(level=parse_level(level))  # type: ignore[arg-type]
        except ValueError as exc:
            raise _bad(str(exc)) from None

    # -- runners -------------------------------------------------------------------------------
    @staticmethod
    def _unary(call: Callable[[Message], Message],
               render: Callable[[Any], dict[str, Any]] = message_to_dict) -> Run:
        async def run(request: web.Request, message: Message) -> tuple[web.StreamResponse, int]:
            response = call(message)
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
