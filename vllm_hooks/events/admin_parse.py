"""A call to one of vLLM's administrative endpoints, read on the sender thread: which
endpoint, its arguments with secrets removed, and its result.

The arguments are what an auditor needs to say what changed ("load adapter `sql` from
/models/sql-lora", "sleep level 2", "update weights to version 7"); anything under a key that
looks like a secret (token, key, secret, password, credential, auth) is replaced by
"<redacted>" at any depth, and the rest is cut at ARGUMENTS_MAX_BYTES (`arguments_truncated`).
The SHA-256 of the whole body as received is kept too, so two calls with the same arguments
are recognisable without keeping them.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

Body = bytes | bytearray

#: Kept of the arguments (JSON text) and of the response body.
ARGUMENTS_MAX_BYTES = 2048
RESULT_MAX_BYTES = 1024
REDACTED = "<redacted>"
_SECRET_KEY = re.compile(r"token|secret|passw|credential|auth|(^|_|-)key($|_|-|s$)|api.?key",
                         re.IGNORECASE)
#: Nesting kept before a value is summarised as its type.
_MAX_DEPTH = 8


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        return f"<{type(value).__name__}>"
    if isinstance(value, dict):
        return {str(k): REDACTED if _SECRET_KEY.search(str(k)) else _redact(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, depth + 1) for v in value]
    return value


def _cut(text: str, limit: int) -> tuple[str, bool]:
    data = text.encode()
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


def redacted_arguments(body: Body) -> tuple[str, bool]:
    """(the body's arguments as JSON with secrets redacted, cut; whether it was cut). A body
    that is not JSON is summarised by its size (its hash is kept beside)."""
    if not body:
        return "", False
    try:
        value = orjson.loads(bytes(body))
    except orjson.JSONDecodeError:
        return f"<{len(body)} bytes, not JSON>", False
    return _cut(orjson.dumps(_redact(value), option=orjson.OPT_SORT_KEYS).decode(),
                ARGUMENTS_MAX_BYTES)


def redacted_query(query: Body) -> str:
    if not query:
        return ""
    pairs = parse_qsl(bytes(query).decode("latin-1"), keep_blank_values=True)
    return _cut(urlencode([(k, REDACTED if _SECRET_KEY.search(k) else v) for k, v in pairs]),
                ARGUMENTS_MAX_BYTES)[0]


def complete_admin_fields(fields: dict[str, Any], body: Body, response: Body,
                          query: Body) -> dict[str, Any]:
    """`fields`: what the middleware read on the loop. Returns the AdminAction fields."""
    out = dict(fields)
    arguments, cut = redacted_arguments(body)
    out.update(arguments=arguments, arguments_truncated=cut,
               arguments_sha256=hashlib.sha256(bytes(body)).hexdigest() if body else "",
               arguments_bytes=len(body), query=redacted_query(query),
               result=_cut(bytes(response).decode("utf-8", "replace"), RESULT_MAX_BYTES)[0])
    return out
