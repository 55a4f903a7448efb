"""VLLM_AUDIT_IN_RESPONSE: `usage.structured_output_audit` in chat and completion responses.

The structured-output audit is made in the EngineCore process and reaches the agent through
that process's sender; the API server, which writes the response, never holds it. So the
middleware reads the request's trail back from the agent (keyed by the X-Request-Id the
middleware injected) once the response's final part is ready, and waits until the engine's
finish is in the trail — the hook offers a request's structured-output summary just before
its finish, so then the summary is there too. It reads over the ingest socket the hook
already streams to, or from the query API when VLLM_AUDIT_QUERY_TOKEN is set (audit_readers.py).
The wait is bounded (VLLM_AUDIT_RESPONSE_TIMEOUT_MS); past it the response goes out with
`{"error": "audit not available within N ms (why)"}` in the field, never held longer.

The gRPC call is synchronous and runs in a worker thread (`asyncio.to_thread`): vLLM's event
loop never blocks on it. Counts are JSON numbers (proto_json.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from typing import Any

import orjson

from vllm_hooks.config.settings import HookSettings
from vllm_hooks.http.audit_readers import Found, ReadError, reader_for
from vllm_hooks.http.proto_json import message_dict

#: Field added to the response's `usage` object.
FIELD = "structured_output_audit"
_POLL_S = 0.005


class ResponseAuditor:
    def __init__(self, settings: HookSettings) -> None:
        self.reader = reader_for(settings)
        self.full = settings.response_level == "full"
        self.timeout_s = settings.response_timeout_ms / 1000.0

    async def audit(self, trail_ids: tuple[str, ...]) -> dict[str, Any]:
        """The first of `trail_ids` the agent holds with the engine's finish in it."""
        return await asyncio.to_thread(self._audit_blocking, trail_ids)

    def _audit_blocking(self, trail_ids: tuple[str, ...]) -> dict[str, Any]:
        start = time.perf_counter()
        deadline = start + self.timeout_s
        last_error = "no trail yet"
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return {"error": f"audit not available within "
                                 f"{self.timeout_s * 1000:.0f} ms ({last_error})"}
            try:
                found = self.reader.read(trail_ids, remaining)
            except ReadError as exc:
                last_error = str(exc)
                found = None
            if found is not None:
                if found.done:
                    return self._render(found, time.perf_counter() - start)
                last_error = "engine finish not in the trail yet"
            time.sleep(min(_POLL_S, max(deadline - time.perf_counter(), 0)))

    def _render(self, found: Found, waited_s: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": found.request_id,
            "audit_summary": {
                "grammar_backend": found.grammar_backend,
                "grammar_spec_type": found.grammar_spec_type,
                "grammar_error": found.grammar_error,
                **message_dict(found.structured_output, with_defaults=True),
            },
            "audit_wait_ms": round(waited_s * 1000.0, 3),
        }
        if self.full:
            out["events"] = [message_dict(e) for e in found.events]
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
