"""Channels to the agent's query API carrying a bearer token (and TLS when configured).

The token rides as `authorization` metadata added by a client interceptor, so the same code
serves plaintext loopback and TLS; with TLS the server is verified against `ca` and, for
mutual TLS, the client presents `cert`/`key`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc


@dataclass(frozen=True)
class ClientTls:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    #: Name the server's certificate must carry when it differs from the address' host.
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


class _Details(collections.namedtuple(
        "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                     "compression")), grpc.ClientCallDetails):
    pass


def _with_token(metadata: Sequence[tuple[str, str | bytes]] | None, token: str
                ) -> list[tuple[str, str | bytes]]:
    return [*(metadata or ()), ("authorization", f"Bearer {token}")]


# grpc's classes are generic only in its stubs.
if TYPE_CHECKING:
    _SyncUnary: TypeAlias = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _SyncStream: TypeAlias = grpc.UnaryStreamClientInterceptor[Any, Any]
    _AioUnary: TypeAlias = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _AioStream: TypeAlias = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
else:
    _SyncUnary, _SyncStream = grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor
    _AioUnary = grpc.aio.UnaryUnaryClientInterceptor
    _AioStream = grpc.aio.UnaryStreamClientInterceptor


class _SyncBearer(_SyncUnary, _SyncStream):
    def __init__(self, token: str) -> None:
        self.token = token

    def _details(self, d: grpc.ClientCallDetails) -> _Details:
        return _Details(d.method, d.timeout, _with_token(d.metadata, self.token), d.credentials,
                        getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation: Callable[..., Any],
                              client_call_details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any],
                               client_call_details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)


def _aio_details(d: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(d.metadata or ()))
    metadata.add("authorization", f"Bearer {token}")
    return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials,
                                      d.wait_for_ready)


# Two classes: an aio channel files each interceptor under its first matching kind only.
class _AioBearerUnary(_AioUnary):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        return await continuation(_aio_details(client_call_details, self.token), request)


class _AioBearerStream(_AioStream):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                                     request: Any) -> Any:
        return await continuation(_aio_details(client_call_details, self.token), request)


def channel(address: str, token: str | None, tls: ClientTls | None = None,
            options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A blocking channel (the CLI, the e2e tests)."""
    options = list(options or [])
    raw = (grpc.secure_channel(address, tls.credentials(), options=tls.options() + options)
           if tls else grpc.insecure_channel(address, options=options))
    return grpc.intercept_channel(raw, _SyncBearer(token)) if token else raw


def aio_channel(address: str, token: str | None, tls: ClientTls | None = None
                ) -> grpc.aio.Channel:
    """An asyncio channel (in-process tests)."""
    # Any: the stubs want a cast for an interceptor list.
    interceptors: Any = [_AioBearerUnary(token), _AioBearerStream(token)] if token else None
    if tls:
        return grpc.aio.secure_channel(address, tls.credentials(), options=tls.options(),
                                       interceptors=interceptors)
    return grpc.aio.insecure_channel(address, interceptors=interceptors)
