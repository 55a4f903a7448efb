"""The gRPC side of auth: a grpc.aio server interceptor that puts every RPC through the
`Gate` (gate.py).

The standard gRPC health service stays unauthenticated so kubelet probes work. An authorised
handler runs with the caller as `current_principal()` and is reported to the meta-audit with
the request and how many trails it returned; a refused one answers the gate's status.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from vllm_audit_agent.api.gate import (
    UNAUTHENTICATED_PREFIXES,
    AuditSink,
    Gate,
    Peer,
    Refused,
    acting_as,
    result_count,
)
from vllm_audit_agent.api.limits import recorded_details
from vllm_audit_agent.api.rate_limit import TokenBuckets
from vllm_audit_agent.api.tokens import Principal, TokenTable

# grpc's classes are generic only in its stubs.
if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    _ServerInterceptor: TypeAlias = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _ServerInterceptor = grpc.aio.ServerInterceptor
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler"]]
logger = logging.getLogger("vllm_audit.agent")


class AuthInterceptor(_ServerInterceptor):
    """Authenticates and authorises every RPC of the server it is installed on, through a
    `Gate` (shared with the HTTP management API).

    The caller is made available to the handler through `current_principal()` (a context
    variable set around the handler), and the sink hears of every authorised call."""

    def __init__(self, tokens: TokenTable, counters: Counter[str],
                 audit_sink: AuditSink | None = None,
                 rate_limit: TokenBuckets | None = None) -> None:
        self.gate = Gate(tokens, counters, audit_sink, rate_limit)

    @property
    def audit_sink(self) -> AuditSink:
        return self.gate.audit_sink

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> Handler:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler  # an unknown method: gRPC answers UNIMPLEMENTED
        token = _bearer(handler_call_details.invocation_metadata or ())
        # Decided inside the handler, where the caller's address is known (back-off per host,
        # and every refusal on record with its peer).
        return self._guarded(handler, method, token)

    def _guarded(self, handler: Handler, method: str, token: str | None) -> Handler:
        gate = self.gate
        # The stubs type handler behaviours for sync servers; on an aio server they are
        # coroutine functions and async generators.
        call_unary: Any = handler.unary_unary
        call_stream: Any = handler.unary_stream

        async def admitted(request: object, context: grpc.aio.ServicerContext[Any, Any]
                           ) -> tuple[Principal, Peer]:
            peer = peer_of(context)
            try:
                principal = gate.authorise(method, token, HOW_TO_SEND, peer)
                gate.admit(principal, method, request)
            except Refused as refused:
                gate.refusal_on_record(refused, method, peer)
                await context.abort(refused.code, refused.message)
            return principal, peer

        async def unary(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            principal, peer = await admitted(request, context)
            count, status, notes = 0, "UNKNOWN", None
            try:
                with acting_as(principal) as notes:
                    response = await call_unary(request, context)
                    count, status = result_count(response), "OK"
                    return response
            except grpc.aio.AbortError:  # the servicer answered with a status
                status = status_of(context)
                raise
            finally:
                # Every admitted call is audited, one that failed too (with its status).
                gate.audited(principal, method, recorded_details(request), count, peer, status,
                             notes)

        async def stream(request: object, context: grpc.aio.ServicerContext[Any, Any]
                         ) -> AsyncIterator[Any]:
            principal, peer = await admitted(request, context)
            details = recorded_details(request)
            count, status = 0, "CANCELLED"
            # A stream is on record from its start, and again every STREAM_RECORD_SECONDS
            # while it is open. It sends nothing before that first record is durable: queued
            # only, an agent killed mid-stream would leave no trace of a reader that had
            # already been sent trails.
            gate.audited(principal, method, details, 0, peer, STREAMING)
            opened = await gate.recorded(OPEN_RECORD_SECONDS)
            noted = time.monotonic()
            try:
                if not opened:
                    logger.warning("%s refused: its access record was not durable within "
                                   "%.0f s", method, OPEN_RECORD_SECONDS)
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE,
                        "the access record of this stream could not be written (record log "
                        f"not durable within {OPEN_RECORD_SECONDS:.0f} s); retry later")
                with acting_as(principal):
                    async for response in call_stream(request, context):
                        count += result_count(response)
                        yield response
                        if time.monotonic() - noted >= STREAM_RECORD_SECONDS:
                            gate.audited(principal, method, details, count, peer, STREAMING)
                            noted = time.monotonic()
                status = "OK"
            except grpc.aio.AbortError:
                status = status_of(context)
                raise
            finally:
                gate.audited(principal, method, details, count, peer, status)

        return _same_kind(handler, unary, stream)


HOW_TO_SEND = "'authorization: Bearer <token>' metadata"
#: The status of a stream's records while it is open (its first record, and the periodic ones).
STREAMING = "STREAMING"
#: Seconds between the records of an open stream.
STREAM_RECORD_SECONDS = 60.0
#: Seconds a stream waits for its first record to be durable before it is refused UNAVAILABLE.
OPEN_RECORD_SECONDS = 10.0


def peer_of(context: grpc.aio.ServicerContext[Any, Any]) -> Peer:
    """The caller's address and, over mutual TLS, its certificate's common name."""
    identity = ""
    with contextlib.suppress(Exception):  # no auth context on an insecure port
        names = context.auth_context().get("x509_common_name") or []
        identity = ",".join(n.decode(errors="replace") for n in names)
    return Peer("grpc", context.peer() or "", identity)


def status_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code = getattr(context, "code", lambda: None)()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _bearer(metadata: Any) -> str | None:
    for item in metadata:
        key, value = item[0], item[1]
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _same_kind(handler: Handler, unary: Callable[..., Any], stream: Callable[..., Any]
               ) -> Handler:
    """A handler of the same shape as `handler` running `unary` or `stream` instead.

    The query API has only unary and server-streaming methods; a client-streaming method
    would be refused rather than run unchecked."""
    common = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **common)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream, **common)

    async def unsupported(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "client-streaming methods are not supported by the auth interceptor")

    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unsupported, **common)
    return grpc.stream_stream_rpc_method_handler(unsupported, **common)

