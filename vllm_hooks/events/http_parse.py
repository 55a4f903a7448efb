"""Parsing an HTTP audit event's bodies: on the sender thread, never on vLLM's event loop.

The middleware hands over the request and response bytes it kept (up to MAX_CAPTURE_BYTES
each: up to 2 MiB of JSON or server-sent events per request) with the fields it could read
for free; `complete_http_fields` turns them into the HttpRequest fields (model, user, prompt,
output, usage, error) when the sender converts the batch.
"""

from __future__ import annotations

from typing import Any

import orjson

from vllm_audit.v1 import events_pb2 as pb

Body = bytes | bytearray


def complete_http_fields(fields: dict[str, Any], body: Body, response: Body) -> dict[str, Any]:
    """`fields`: what the middleware read on the loop, with `prompt_tokens`/
    `completion_tokens` -1 when vLLM's request metadata had no usage. Returns the complete
    HttpRequest fields (a new dict)."""
    out = dict(fields)
    request = _json_object(body)
    output, usage = _response_output(response, bool(out.get("stream")))
    prompt_tokens = int(out.get("prompt_tokens", -1))
    completion_tokens = int(out.get("completion_tokens", -1))
    if usage is not None and prompt_tokens < 0:
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
    status = int(out.get("status_code", 0))
    error = str(out.get("error") or "")
    if not error and status >= 400:
        error = _error_message(response)
    if out.get("client_disconnected") and not error:
        error = "client disconnected before the response was complete"
    # The body's `user` is the least trusted identity source (identity.py): it is kept as
    # claimed_user, and becomes the user only when neither the key nor a trusted proxy named one.
    claimed = request.get("user")
    claimed = claimed.strip() if isinstance(claimed, str) else ""
    out["claimed_user"] = claimed
    if claimed and not out.get("user"):
        out["user"], out["user_source"] = claimed, pb.IDENTITY_SOURCE_CLAIMED
    out.update(
        model=str(request.get("model") or ""),
        prompt=_prompt_text(request),
        output=output,
        prompt_tokens=max(prompt_tokens, 0),
        completion_tokens=max(completion_tokens, 0),
        error=error,
    )
    return out


def _json_object(data: Body) -> dict[str, Any]:
    try:
        value = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _prompt_text(request: dict[str, Any]) -> str:
    if "messages" in request:
        parts = []
        for message in request.get("messages") or ():
            if isinstance(message, dict):
                content = message.get("content")
                if isinstance(content, list):
                    content = " ".join(
                        str(p.get("text", "")) for p in content if isinstance(p, dict)
                    )
                parts.append(f"{message.get('role', '')}: {content or ''}")
        return "\n".join(parts)
    prompt = request.get("prompt", request.get("input", ""))
    return prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()


def _response_output(body: Body, stream: bool) -> tuple[str, dict[str, Any] | None]:
    """The generated text and usage, from a JSON body or from SSE chunks."""
    if not stream:
        obj = _json_object(body)
        return _choices_text(obj.get("choices"), delta=False), obj.get("usage")
    texts: list[str] = []
    usage = None
    for line in body.split(b"\n"):
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        obj = _json_object(line[6:])
        texts.append(_choices_text(obj.get("choices"), delta=True))
        usage = obj.get("usage") or usage
    return "".join(texts), usage


def _choices_text(choices: Any, delta: bool) -> str:
    if not isinstance(choices, list):
        return ""
    out = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if "text" in choice:
            out.append(str(choice.get("text") or ""))
        else:
            message = choice.get("delta" if delta else "message") or {}
            out.append(str(message.get("content") or ""))
    return "".join(out)


def _error_message(body: Body) -> str:
    obj = _json_object(body)
    error = obj.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or "")[:1000]
    return str(error or obj.get("detail") or "")[:1000]
