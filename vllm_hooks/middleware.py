"""Pure ASGI middleware for `vllm serve`: one audit event per HTTP request.

Use: `--middleware vllm_hooks.middleware.AuditMiddleware`. It sees the client address,
headers, the request body (model, user, prompt or messages), the response status (401 from
vLLM's own API-key check), the response bytes and, after the response,
`scope["state"]["request_metadata"]` (vLLM's request id and final usage).

It hands vLLM an `X-Request-Id` of its own for every request (a fresh UUID): vLLM derives its
own request id from that header (`chatcmpl-<id>`), which is how the agent joins this event
with the engine's. The id is the trail's key, so it must be unique and must not be chosen by
the client: two requests sent with one X-Request-Id would otherwise merge into one trail,
letting any caller overwrite another's audit record. The client's header is kept as
`client_request_id` (searchable) and put back into the response's X-Request-Id header.
Only the API key's SHA-256 is recorded, never the key. Bodies are captured up to a bound;
the capture policy (hmac by default) is applied before anything leaves the process.

User, tenant and client IP come from sources in order of trust, each recorded with its source
(identity.py); `auth_status` is what vLLM's own API-key check decided, known from the app vLLM
built (vllm.api_key_check, asked once, on the first audited request).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from vllm_hooks.config.levels import Level
from vllm_hooks.config.settings import settings
from vllm_hooks.errors import ERRORS
from vllm_hooks.events import raw_events as raw
from vllm_hooks.events.http_parse import complete_http_fields
from vllm_hooks.events.self_timing import SelfTimer, clock
from vllm_hooks.http.identity import (
    AUTH_STATUS_TEXT,
    SOCKET_PEER_KEY,
    IdentityConfig,
    RequestIdentity,
    auth_decision,
)
from vllm_hooks.http.trace_context import traceparent
from vllm_hooks.runtime import HookRuntime, get_runtime

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: (method, path, root_path) -> whether vLLM checks an API key on that request.
KeyCheck = Callable[[str, str, str], bool]

_SUMMARY = int(Level.SUMMARY)
#: Request and response bodies kept for the prompt/output fields (bytes); the rest is counted.
MAX_CAPTURE_BYTES = 1 << 20
#: Paths audited: the inference endpoints. Health checks and /metrics are not requests to audit.
AUDITED_PREFIXES = ("/v1/", "/v2/", "/invocations", "/pooling", "/classify", "/score", "/rerank")
#: vLLM's administrative endpoints (0.32: serve/lora, rl/online, serve/dev, serve/profile,
#: serve/elastic_ep): each call changes what serves later requests, or how, and is an admin
#: record of its own (AdminAction), at every audit level (the level sets how much of each
#: inference request is kept; it must not hide who reloaded the weights). Read-only ones
#: (/is_sleeping, /weight_info, /is_paused) are not audited.
ADMIN_PATHS = frozenset({
    "/v1/load_lora_adapter", "/v1/unload_lora_adapter",
    "/init_weight_transfer_engine", "/shutdown_weight_transfer_engine", "/start_weight_update",
    "/start_draft_weight_update", "/update_weights", "/finish_weight_update",
    "/update_weight_version", "/weight_checker",
    "/sleep", "/wake_up", "/release_kv_cache_memory", "/pause", "/resume", "/abort_requests",
    "/reset_prefix_cache", "/reset_mm_cache", "/reset_encoder_cache", "/collective_rpc",
    "/start_profile", "/stop_profile", "/scale_elastic_ep",
})


class AuditMiddleware:
    def __init__(self, app: ASGIApp, runtime: HookRuntime | None = None,
                 key_check: KeyCheck | None = None) -> None:
        """vLLM passes `app` alone; `runtime` and `key_check` are for embedding (a runtime not
        from the environment; a key check known in advance instead of read from the app)."""
        self.app = app
        self._rt: HookRuntime | None = None
        self._auditor: Any = None  # ResponseAuditor when VLLM_AUDIT_IN_RESPONSE=true
        self._identity = IdentityConfig()
        self._key_check = key_check
        self._key_check_known = key_check is not None
        try:
            if runtime is not None or settings().enabled:
                self._rt = runtime or get_runtime("api_server")
                self._identity = IdentityConfig.from_settings(self._rt.settings)
                if self._rt.settings.in_response:
                    from vllm_hooks.http.response_audit import ResponseAuditor

                    self._auditor = ResponseAuditor(self._rt.settings)
        except Exception as exc:
            ERRORS.record("middleware.init", exc)
        if self._rt is not None:
            try:
                from vllm_hooks.vllm.socket_peer_patch import keep_socket_peer

                keep_socket_peer()  # before the first request reaches uvicorn's middleware
            except Exception as exc:
                ERRORS.record("middleware.socket_peer", exc)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt = self._rt
        if rt is not None and scope["type"] == "http" and scope.get("path") in ADMIN_PATHS:
            await self._admin(rt, scope, receive, send)
            return
        if (
            rt is None
            or rt.level < _SUMMARY
            or scope["type"] != "http"
            or not scope.get("path", "").startswith(AUDITED_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        timer = rt.timer  # VLLM_AUDIT_SELF_TIMING: one compare per request when off
        start = clock() if timer is not None else 0
        try:
            audit = _RequestAudit(scope, self._identity)
            audit.key_checked = self._vllm_checks_key(scope)
        except Exception as exc:
            ERRORS.record("middleware.begin", exc)
            await self.app(scope, receive, send)
            return
        send_out = audit.wrap_send(send, timer)
        if self._auditor is not None:
            send_out = _with_response_audit(self._auditor, scope, audit.request_id, send_out)
        receive_in = audit.wrap_receive(receive, timer)
        if timer is not None:
            timer.middleware(clock() - start)
        try:
            await self.app(audit.scope, receive_in, send_out)
        except BaseException as exc:
            audit.error = repr(exc)
            if audit.status == 0:
                audit.status = 500
            raise
        finally:
            start = clock() if timer is not None else 0
            try:
                rt.buffer.offer(audit.raw_event())
            except Exception as exc:
                ERRORS.record("middleware.end", exc)
            if timer is not None:
                timer.middleware(clock() - start)
                timer.middleware_request()

    async def _admin(self, rt: HookRuntime, scope: Scope, receive: Receive, send: Send) -> None:
        """An administrative call: vLLM answers it as ever; its record is offered after."""
        try:
            audit = _RequestAudit(scope, self._identity)
            audit.key_checked = self._vllm_checks_key(scope)
        except Exception as exc:
            ERRORS.record("middleware.admin_begin", exc)
            await self.app(scope, receive, send)
            return
        try:
            await self.app(audit.scope, audit.wrap_receive(receive), audit.wrap_send(send))
        except BaseException as exc:
            audit.error = repr(exc)
            if audit.status == 0:
                audit.status = 500
            raise
        finally:
            try:
                rt.buffer.offer(audit.admin_event())
            except Exception as exc:
                ERRORS.record("middleware.admin_end", exc)

    def _vllm_checks_key(self, scope: Scope) -> bool | None:
        if not self._key_check_known:
            self._key_check_known = True  # asked once: the app's middleware is fixed by now
            try:
                from vllm_hooks.vllm.api_key_check import vllm_key_check

                self._key_check = vllm_key_check(scope.get("app"))
            except Exception as exc:
                ERRORS.record("middleware.key_check", exc)
        check = self._key_check
        if check is None:
            return None
        return check(str(scope.get("method", "")), str(scope.get("path", "")),
                     str(scope.get("root_path", "")))


def _with_response_audit(auditor: Any, scope: Scope, request_id: str, send: Send) -> Send:
    """VLLM_AUDIT_IN_RESPONSE: the response audit sits between vLLM and the request audit, so
    the request audit records the bytes the client actually received."""
    from vllm_hooks.http.response_audit import PATHS, ResponseInjector

    if scope.get("method") != "POST" or scope.get("path") not in PATHS:
        return send
    injector: Send = ResponseInjector(auditor, request_id, str(scope.get("path")), send,
                                      ERRORS).send
    return injector


class _RequestAudit:
    def __init__(self, scope: Scope, identity: IdentityConfig | None = None) -> None:
        self.start_ns = time.time_ns()
        self.t0 = time.perf_counter()
        original: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
        lookup = {k.lower(): v for k, v in original}
        request_id = uuid.uuid4().hex.encode()
        headers = [(k, v) for k, v in original if k.lower() != b"x-request-id"]
        headers.append((b"x-request-id", request_id))
        scope = dict(scope)
        scope["headers"] = headers
        self.scope = scope
        self.request_id = request_id.decode("latin-1")
        self.request_id_bytes = request_id
        self.client_request_id: bytes | None = lookup.get(b"x-request-id")
        auth = lookup.get(b"authorization", b"")
        token = auth[7:] if auth[:7].lower() == b"bearer " else auth
        self.api_key_sha256 = hashlib.sha256(token).hexdigest() if token else ""
        self.user_agent = lookup.get(b"user-agent", b"").decode("latin-1")
        self.traceparent = traceparent(lookup.get(b"traceparent"))
        # The TCP peer (uvicorn may have put an X-Forwarded-For address into "client").
        client = scope.get(SOCKET_PEER_KEY) or scope.get("client")
        peer = str(client[0]) if client else ""
        self.identity = RequestIdentity(identity or IdentityConfig(), peer, lookup)
        #: Whether vLLM checks an API key on this request; None: unknown.
        self.key_checked: bool | None = None
        self.body = bytearray()
        self.response = bytearray()
        self.response_bytes = 0
        self.status = 0
        self.ttft_ms = 0.0
        self.stream = False
        self.error = ""
        self.response_complete = False
        self.client_disconnected = False

    def wrap_receive(self, receive: Receive, timer: SelfTimer | None = None) -> Receive:
        on_receive = self._on_receive

        async def audited_receive() -> Message:
            message = await receive()
            on_receive(message)
            return message

        async def timed_receive() -> Message:
            message = await receive()
            start = clock()
            on_receive(message)
            # the ignore[union-attr] below: set when self-timing is on (only then here)
            timer.middleware(clock() - start)  # type: ignore[union-attr]
            return message

        return audited_receive if timer is None else timed_receive

    def _on_receive(self, message: Message) -> None:
        try:
            kind = message.get("type")
            if kind == "http.request":
                chunk = message.get("body", b"")
                room = MAX_CAPTURE_BYTES - len(self.body)
                if room > 0:
                    self.body += chunk[:room]
            elif kind == "http.disconnect" and not self.response_complete:
                self.client_disconnected = True
        except Exception as exc:
            ERRORS.record("middleware.receive", exc)

    def wrap_send(self, send: Send, timer: SelfTimer | None = None) -> Send:
        on_send = self._on_send

        async def audited_send(message: Message) -> None:
            await send(on_send(message))

        async def timed_send(message: Message) -> None:
            start = clock()
            message = on_send(message)
            # the ignore[union-attr] below: set when self-timing is on (only then here)
            timer.middleware(clock() - start)  # type: ignore[union-attr]
            await send(message)

        return audited_send if timer is None else timed_send

    def _on_send(self, message: Message) -> Message:
        """Records what vLLM sends; returns the message to pass on (its X-Request-Id header
        restored to the client's)."""
        try:
            kind = message.get("type")
            if kind == "http.response.start":
                self.status = int(message.get("status", 0))
                headers = list(message.get("headers") or ())
                for key, value in headers:
                    if key.lower() == b"content-type" and b"text/event-stream" in value:
                        self.stream = True
                message = self._restore_client_request_id(message, headers)
            elif kind == "http.response.body":
                if not message.get("more_body", False):
                    self.response_complete = True
                chunk = message.get("body", b"")
                if chunk and self.ttft_ms == 0.0:
                    self.ttft_ms = (time.perf_counter() - self.t0) * 1000.0
                self.response_bytes += len(chunk)
                room = MAX_CAPTURE_BYTES - len(self.response)
                if room > 0:
                    self.response += chunk[:room]
        except Exception as exc:
            ERRORS.record("middleware.send", exc)
        return message

    def _restore_client_request_id(self, message: Message,
                                   headers: list[tuple[bytes, bytes]]) -> Message:
        """vLLM echoes X-Request-Id (--enable-request-id-headers): the client gets back its
        own id, or none if it sent none, never the trail id it did not choose."""
        if not any(k.lower() == b"x-request-id" and v == self.request_id_bytes
                   for k, v in headers):
            return message
        kept = [(k, v) for k, v in headers
                if not (k.lower() == b"x-request-id" and v == self.request_id_bytes)]
        if self.client_request_id is not None:
            kept.append((b"x-request-id", self.client_request_id))
        message = dict(message)
        message["headers"] = kept
        return message

    def loop_fields(self) -> dict[str, Any]:
        """What the event loop records when the response is done: no body is parsed here (see
        `raw_event`); `prompt_tokens`/`completion_tokens` are -1 without vLLM's usage. The
        identity is resolved from the key and the trusted headers; the body's claimed user
        is read with the body, on the sender thread (http_parse)."""
        latency_ms = (time.perf_counter() - self.t0) * 1000.0
        prompt_tokens, completion_tokens, vllm_request_id = _metadata_usage(self.scope)
        decision = auth_decision(self.status, self.key_checked)
        return {
            "method": str(self.scope.get("method", "")),
            "path": str(self.scope.get("path", "")),
            "client_ip": self.identity.client_ip,
            **self.identity.resolve(self.api_key_sha256, ""),
            "status_code": self.status,
            "auth_decision": decision,
            "auth_status": AUTH_STATUS_TEXT[decision],
            "api_key_sha256": self.api_key_sha256,
            "stream": self.stream,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "latency_ms": latency_ms,
            "ttft_ms": self.ttft_ms,
            "error": self.error,
            "client_disconnected": self.client_disconnected,
            "user_agent": self.user_agent,
            "traceparent": self.traceparent,
            "response_bytes": self.response_bytes,
            "vllm_request_id": vllm_request_id,
            "client_request_id": (self.client_request_id or b"").decode("latin-1"),
        }

    def raw_event(self) -> tuple[Any, ...]:
        """The event offered at the end: the kept bytes are handed over as they are (no
        copy) and parsed on the sender thread (`http_parse.complete_http_fields`)."""
        return (raw.HTTP_UNPARSED, self.start_ns, self.request_id, self.loop_fields(),
                self.body, self.response)

    def admin_event(self) -> tuple[Any, ...]:
        """The AdminAction event: identity and result read here, the bodies on the sender
        thread (admin_parse)."""
        decision = auth_decision(self.status, self.key_checked)
        identity = self.identity.resolve(self.api_key_sha256, "")
        path = str(self.scope.get("path", ""))
        fields = {
            "method": str(self.scope.get("method", "")), "path": path,
            "action": path.rstrip("/").rsplit("/", 1)[-1],
            "client_ip": self.identity.client_ip,
            "user": identity.get("user", ""), "tenant": identity.get("tenant", ""),
            "user_source": identity.get("user_source", 0),
            "tenant_source": identity.get("tenant_source", 0),
            "ignored_identity_headers": identity.get("ignored_identity_headers", []),
            "api_key_sha256": self.api_key_sha256, "auth_decision": decision,
            "status_code": self.status,
            "latency_ms": (time.perf_counter() - self.t0) * 1000.0,
            "error": self.error, "user_agent": self.user_agent,
            "client_request_id": (self.client_request_id or b"").decode("latin-1"),
        }
        return (raw.ADMIN_UNPARSED, self.start_ns, "", fields, self.body, self.response,
                bytes(self.scope.get("query_string") or b""))

    def fields(self) -> dict[str, Any]:
        """Every HttpRequest field, parsed here (tests and tools; the middleware offers
        `raw_event` instead, so the parsing happens off the loop)."""
        return complete_http_fields(self.loop_fields(), self.body, self.response)


def _metadata_usage(scope: Scope) -> tuple[int, int, str]:
    """vLLM's final usage from scope["state"]["request_metadata"]; -1 when absent."""
    state = scope.get("state") or {}
    metadata = state.get("request_metadata") if isinstance(state, dict) else None
    if metadata is None:
        return -1, -1, ""
    request_id = str(getattr(metadata, "request_id", "") or "")
    usage = getattr(metadata, "final_usage_info", None)
    if usage is None:
        return -1, -1, request_id
    return int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0), request_id
