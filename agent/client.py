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
from typing import Any

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


class _SyncBearer(grpc.UnaryUnaryClientInterceptor[Any, Any],
                  grpc.UnaryStreamClientInterceptor[Any, Any]):
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


class _AioBearer(grpc.aio.UnaryUnaryClientInterceptor[Any, Any],
                 grpc.aio.UnaryStreamClientInterceptor[Any, Any]):
    def __init__(self, token: str) -> None:
        self.token = token

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(d.metadata or ()))
        metadata.add("authorization", f"Bearer {self.token}")
        return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials,
                                          d.wait_for_ready)

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                                     request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


def channel(address: str, token: str | None, tls: ClientTls | None = None) -> grpc.Channel:
    """A blocking channel (the CLI, the e2e tests)."""
    raw = (grpc.secure_channel(address, tls.credentials(), options=tls.options()) if tls
           else grpc.insecure_channel(address))
    return grpc.intercept_channel(raw, _SyncBearer(token)) if token else raw


def aio_channel(address: str, token: str | None, tls: ClientTls | None = None
                ) -> grpc.aio.Channel:
    """An asyncio channel (in-process tests)."""
    interceptors: Any = [_AioBearer(token)] if token else None  # the stubs want a cast
    if tls:
        return grpc.aio.secure_channel(address, tls.credentials(), options=tls.options(),
                                       interceptors=interceptors)
    return grpc.aio.insecure_channel(address, interceptors=interceptors)
