"""The gRPC side of auth: a grpc.aio server interceptor that puts every RPC through the
`Gate` (gate.py).

The standard gRPC health service stays unauthenticated so kubelet probes work. An authorised
handler runs with the caller as `current_principal()` and is reported to the meta-audit with
the request and how many trails it returned; a refused one answers the gate's status.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from vllm_audit_agent.api.gate import (
    UNAUTHENTICATED_PREFIXES,
    AuditSink,
    Gate,
    Refused,
    acting_as,
    request_details,
    result_count,
)
from vllm_audit_agent.api.tokens import Principal, TokenTable

# grpc's classes are generic only in its stubs.
if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    _ServerInterceptor: TypeAlias = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _ServerInterceptor = grpc.aio.ServerInterceptor
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler"]]


class AuthInterceptor(_ServerInterceptor):
    """Authenticates and authorises every RPC of the server it is installed on, through a
    `Gate` (shared with the HTTP management API).

    The caller is made available to the handler through `current_principal()` (a context
    variable set around the handler), and the sink hears of every authorised call."""

    def __init__(self, tokens: TokenTable, counters: Counter[str],
                 audit_sink: AuditSink | None = None) -> None:
        self.gate = Gate(tokens, counters, audit_sink)

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
        try:
            principal = self.gate.authorise(method, token,
                                            "'authorization: Bearer <token>' metadata")
        except Refused as refused:
            return self._refuse(handler, refused.code, refused.message)
        return self._authorised(handler, principal, method)

    def _refuse(self, handler: Handler, code: grpc.StatusCode, message: str) -> Handler:

        async def deny(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(code, message)

        async def deny_stream(request: object, context: grpc.aio.ServicerContext[Any, Any]
                              ) -> AsyncIterator[Any]:
            await context.abort(code, message)
            yield  # pragma: no cover - abort raised

        return _same_kind(handler, deny, deny_stream)

    def _authorised(self, handler: Handler, principal: Principal, method: str) -> Handler:
        gate = self.gate
        # The stubs type handler behaviours for sync servers; on an aio server they are
        # coroutine functions and async generators.
        call_unary: Any = handler.unary_unary
        call_stream: Any = handler.unary_stream

        async def unary(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            count = 0
            try:
                with acting_as(principal):
                    response = await call_unary(request, context)
                    count = result_count(response)
                    return response
            finally:
                # Every authorised call is audited, one that raised too (with count 0).
                gate.audited(principal, method, request_details(request), count)

        async def stream(request: object, context: grpc.aio.ServicerContext[Any, Any]
                         ) -> AsyncIterator[Any]:
            count = 0
            try:
                with acting_as(principal):
                    async for response in call_stream(request, context):
                        count += result_count(response)
                        yield response
            finally:
                gate.audited(principal, method, request_details(request), count)

        return _same_kind(handler, unary, stream)


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

