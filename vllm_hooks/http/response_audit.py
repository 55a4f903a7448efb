"""VLLM_AUDIT_IN_RESPONSE: `usage.structured_output_audit` in chat and completion responses.

The structured-output audit is made in the EngineCore process and reaches the agent through
that process's sender; the API server, which writes the response, never holds it. So the
middleware asks the agent's query API for the request's trail (keyed by the X-Request-Id the
middleware saw or injected) once the response's final part is ready, and waits until the
engine's finish is in the trail — the hook offers a request's structured-output summary just
before its finish, so then the summary is there too. The wait is bounded
(VLLM_AUDIT_RESPONSE_TIMEOUT_MS); past it the response goes out with
`{"error": "audit not available within N ms"}` in the field, never held longer.

The gRPC call is synchronous and runs in a worker thread (`asyncio.to_thread`): vLLM's event
loop never blocks on it. The channel is opened lazily in the process that uses it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import MutableMapping
from typing import Any

import grpc
import orjson
from google.protobuf import json_format

from vllm_audit.v1 import query_pb2 as q
from vllm_audit.v1 import query_pb2_grpc
from vllm_hooks.config.settings import HookSettings

#: Field added to the response's `usage` object.
FIELD = "structured_output_audit"
_POLL_S = 0.005


class ResponseAuditor:
    def __init__(self, settings: HookSettings) -> None:
        self.address = settings.query_address
        # The query API wants a bearer token with read access to every tenant (role auditor).
        self.metadata = (("authorization", f"Bearer {settings.query_token}"),) \
            if settings.query_token else ()
        self.full = settings.response_level == "full"
        self.timeout_s = settings.response_timeout_ms / 1000.0
        self._lock = threading.Lock()
        self._channel: tuple[int, grpc.Channel, Any] | None = None

    def _stub(self) -> Any:
        with self._lock:
            current = self._channel
            if current is None or current[0] != os.getpid():
                channel = grpc.insecure_channel(self.address)
                # generated gRPC stubs are untyped.
                # the ignore[no-untyped-call] below: generated gRPC stubs are untyped
                stub = query_pb2_grpc.QueryServiceStub(channel)  # type: ignore[no-untyped-call]
                current = (os.getpid(), channel, stub)
                self._channel = current
            return current[2]

    async def audit(self, trail_ids: tuple[str, ...]) -> dict[str, Any]:
        """The first of `trail_ids` the agent holds with the engine's finish in it."""
        return await asyncio.to_thread(self._audit_blocking, trail_ids)

    def _audit_blocking(self, trail_ids: tuple[str, ...]) -> dict[str, Any]:
        start = time.perf_counter()
        deadline = start + self.timeout_s
        stub = self._stub()
        last_error = "no trail yet"
        while True:
            for trail_id in trail_ids:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    return {"error": f"audit not available within "
                                     f"{self.timeout_s * 1000:.0f} ms ({last_error})"}
                try:
                    trail = self._get(stub, trail_id, remaining)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        last_error = f"agent: {exc.code().name}"
                    continue
                if trail.summary.finish_reason or trail.summary.grammar_error:
                    return self._render(trail, time.perf_counter() - start)
                last_error = "engine finish not in the trail yet"
            time.sleep(min(_POLL_S, max(deadline - time.perf_counter(), 0)))

    def _get(self, stub: Any, trail_id: str, timeout: float) -> q.GetTrailResponse:
        """The trail, every page of its events (a long trail exceeds one message)."""
        request = q.GetTrailRequest(request_id=trail_id, include_events=self.full)
        trail: q.GetTrailResponse = stub.GetTrail(request, timeout=timeout,
                                                  metadata=self.metadata)
        while trail.next_event_offset:
            request.event_offset = trail.next_event_offset
            page = stub.GetTrail(request, timeout=timeout, metadata=self.metadata)
            trail.events.extend(page.events)
            trail.next_event_offset = page.next_event_offset
        return trail

    def _render(self, trail: q.GetTrailResponse, waited_s: float) -> dict[str, Any]:
        s = trail.summary
        out: dict[str, Any] = {
            "request_id": s.request_id,
            "audit_summary": {
                "grammar_backend": s.grammar_backend,
                "grammar_spec_type": s.grammar_spec_type,
                "grammar_error": s.grammar_error,
                **json_format.MessageToDict(
                    s.structured_output, preserving_proto_field_name=True,
                    always_print_fields_with_no_presence=True),
            },
            "audit_wait_ms": round(waited_s * 1000.0, 3),
        }
        if self.full:
            out["events"] = [
                json_format.MessageToDict(e, preserving_proto_field_name=True)
                for e in trail.events
                if e.WhichOneof("body") in ("grammar_compiled", "so_step", "so_summary")
            ]
        return out


#: Paths whose responses carry the field (OpenAI chat and completions).
PATHS = ("/v1/chat/completions", "/v1/completions")
#: Non-streaming bodies held for rewriting up to this size; a larger one passes unchanged.
MAX_HELD_BYTES = 8 << 20
#: Bodies larger than this are parsed off the event loop, in a worker thread.
OFFLOAD_BYTES = 64 << 10

Message = MutableMapping[str, Any]


class ResponseInjector:
    """Wraps one request's ASGI `send`: adds the audit to the JSON body's `usage`, or to the
    final usage chunk of an event stream (the chunk with `usage` and no choices, sent when the
    client asked `stream_options.include_usage`). A failure sends the original bytes."""

    def __init__(self, auditor: ResponseAuditor, request_id: str, path: str, send: Any,
                 errors: Any) -> None:
        self.auditor = auditor
        # vLLM names a completion's engine request `cmpl-<X-Request-Id>-<prompt index>`; the
        # agent's trail for it is `<X-Request-Id>-0` unless it joins it to the HTTP trail.
        self.trail_ids = (request_id, f"{request_id}-0") if path == "/v1/completions" \
            else (request_id,)
        self._send = send
        self._errors = errors
        self._mode = "pass"  # pass | json | stream
        self._start: Message | None = None
        self._held = bytearray()

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            self._mode = _mode_for(message)
            if self._mode == "json":
                self._start = message  # held: the body's length changes
                return
        elif kind == "http.response.body" and self._mode == "json":
            await self._json_body(message)
            return
        elif kind == "http.response.body" and self._mode == "stream":
            body = message.get("body", b"")
            if b'"usage"' in body:
                message = {**message, "body": await self._guarded(self._patch_stream, body)}
        await self._send(message)

    async def _json_body(self, message: Message) -> None:
        more = bool(message.get("more_body", False))
        self._held += message.get("body", b"")
        if more and len(self._held) <= MAX_HELD_BYTES:
            return
        body, self._held = bytes(self._held), bytearray()
        start, self._start = self._start or {}, None
        self._mode = "pass"
        patched = body if more else await self._guarded(self._patch_json, body)
        if patched is not body:
            headers = [(k, v) for k, v in start.get("headers") or ()
                       if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(patched)).encode()))
            start = {**start, "headers": headers}
        await self._send(start)
        await self._send({**message, "body": patched})

    async def _guarded(self, patch: Any, body: bytes) -> bytes:
        try:
            patched: bytes = await patch(body)
            return patched
        except Exception as exc:
            self._errors.record("response_audit.patch", exc)
            return body

    async def _patch_json(self, body: bytes) -> bytes:
        # A large body is parsed and re-encoded in a worker thread: vLLM's event loop serves
        # every other request meanwhile (a small one costs less than the thread hop).
        offload = len(body) > OFFLOAD_BYTES
        obj = await asyncio.to_thread(orjson.loads, body) if offload else orjson.loads(body)
        if not isinstance(obj, dict) or not isinstance(obj.get("usage"), dict):
            return body
        obj["usage"][FIELD] = await self.auditor.audit(self.trail_ids)
        return await asyncio.to_thread(orjson.dumps, obj) if offload else orjson.dumps(obj)

    async def _patch_stream(self, body: bytes) -> bytes:
        events = body.split(b"\n\n")
        changed = False
        for i, event in enumerate(events):
            if not event.startswith(b"data: ") or b'"usage"' not in event:
                continue
            obj = orjson.loads(event[6:])
            if isinstance(obj, dict) and isinstance(obj.get("usage"), dict) and \
                    obj.get("choices") == []:
                obj["usage"][FIELD] = await self.auditor.audit(self.trail_ids)
                events[i] = b"data: " + orjson.dumps(obj)
                changed = True
        return b"\n\n".join(events) if changed else body


def _mode_for(start: Message) -> str:
    if int(start.get("status", 0)) != 200:
        return "pass"
    for key, value in start.get("headers") or ():
        if key.lower() == b"content-type":
            if b"text/event-stream" in value:
                return "stream"
            if b"application/json" in value:
                return "json"
    return "pass"
