"""The agent's HTTP port: an aiohttp app serving /metrics (the collectors' exposition),
/healthz and /readyz, and the management API's routes (http_api.py) when given.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from vllm_audit_agent.api.readiness import readiness
from vllm_audit_agent.api.tokens import bearer_matches
from vllm_audit_agent.state import AgentState

logger = logging.getLogger("vllm_audit.agent")

#: Largest request body the HTTP port accepts (the management API's JSON bodies are tiny).
MAX_BODY_BYTES = 64 << 10
#: The management API's routes (http_api.py); everything else is probes and scrapes.
API_PREFIX = "/api/"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def encode_metrics(registry: CollectorRegistry, accept: str,
                   accept_encoding: str) -> tuple[bytes, dict[str, str]]:
    """The exposition the client asked for (OpenMetrics or text 0.0.4), gzip if accepted."""
    encoder, content_type = choose_encoder(accept)
    body = encoder(registry)
    headers = {"Content-Type": content_type}
    if "gzip" in accept_encoding.lower():
        body = gzip.compress(body, compresslevel=6)
        headers["Content-Encoding"] = "gzip"
    return body, headers


class HttpEndpoint:
    """The agent's HTTP port (aiohttp): /metrics, /healthz (alive), /readyz (ingest and query
    serving), and the management API's routes under /api/v1 (http_api.py) when given.

    The probe and scrape routes close the connection after each answer, as they always did;
    an error in any handler is counted (`internal_errors{site="http"}`) and answered 500."""

    def __init__(self, state: AgentState, registry: CollectorRegistry,
                 api_routes: Sequence[web.RouteDef] = ()) -> None:
        self.state = state
        self.registry = registry
        self.api_routes = list(api_routes)
        self.runner: web.AppRunner | None = None
        #: The port bound (known after start; 0 asks the system for one).
        self.port = 0
        #: Set: /metrics needs `Authorization: Bearer <token>` with this SHA-256 (tokens.py).
        self.metrics_token_sha256: str | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None
                    ) -> None:
        app = web.Application(middlewares=[self._count_errors], client_max_size=MAX_BODY_BYTES)
        app.add_routes([web.get("/metrics", self._metrics), web.get("/healthz", self._healthz),
                        web.get("/readyz", self._readyz), *self.api_routes])
        # A short grace at stop: the agent's shutdown deadline is shared by every step.
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                    shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError:
            await self.runner.cleanup()
            raise
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @web.middleware
    async def _count_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        api = request.path.startswith(API_PREFIX)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own answers: no route (404), method (405)
            response = _http_error(exc, request) if api else web.Response(
                status=exc.status, text=f"{exc.reason.lower()}\n")
        except (ConnectionError, asyncio.CancelledError):
            raise  # the client went away
        except Exception as exc:
            self.state.errors["http"] += 1
            logger.exception("HTTP %s %s failed: %r", request.method, request.path, exc)
            response = web.json_response(
                {"error": {"status": 500, "code": "INTERNAL",
                           "message": f"internal error serving {request.path}: {exc!r}"}},
                status=500)
        if not api:
            # Probes and scrapes: one answer per connection, as the endpoint always did.
            response.force_close()
        return response

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        if not bearer_matches(request.headers.get("Authorization", ""),
                              self.metrics_token_sha256):
            return web.Response(status=401, text="bearer token required\n")
        body, headers = encode_metrics(self.registry, request.headers.get("Accept", ""),
                                       request.headers.get("Accept-Encoding", ""))
        return web.Response(body=body, headers=headers)

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        ready, text = readiness(self.state)
        return web.Response(status=200 if ready else 503,
                            text=("ready\n" if ready else "not ready\n") + text)


def _http_error(exc: web.HTTPException, request: web.Request) -> web.Response:
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "REQUEST_TOO_LARGE"}.get(
        exc.status, "HTTP_ERROR")
    message = {404: f"no route {request.path}",
               405: f"{request.method} is not allowed on {request.path}"}.get(
        exc.status, f"{exc.reason}: {request.method} {request.path}")
    response = web.json_response({"error": {"status": exc.status, "code": code,
                                            "message": message}}, status=exc.status)
    allow = exc.headers.get("Allow")
    if allow:
        response.headers["Allow"] = allow
    return response
