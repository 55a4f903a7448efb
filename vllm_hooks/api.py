"""Public API for code running inside vLLM's processes (custom logits processors, plugins).

    from vllm_hooks.api import record_custom_event
    record_custom_event("policy_check", {"verdict": "allow"}, request_id=req_id)

The call only appends to the hook's bounded buffer (like every hook call site): it never
blocks and never sends. Bad input raises: this is the caller's code, not vLLM's path.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from vllm_hooks.config.levels import Level
from vllm_hooks.events import raw_events as raw
from vllm_hooks.runtime import current_runtime

__all__ = ["MAX_ATTRIBUTE_BYTES", "MAX_NAME_CHARS", "record_custom_event"]

MAX_NAME_CHARS = 128
#: Keys and values of one event together, in UTF-8 bytes.
MAX_ATTRIBUTE_BYTES = 16 * 1024
_SUMMARY = int(Level.SUMMARY)


def record_custom_event(
    name: str, attributes: Mapping[str, str] | None = None, request_id: str = ""
) -> bool:
    """Records an application event, in the trail of `request_id` when given (vLLM's engine
    request id or the X-Request-Id), else in the process's stream.

    Returns True when the event was offered to the buffer (a full buffer still counts it as a
    `buffer_full` drop, like any event), False when the hook is not running in this process or
    the audit level is off. Raises ValueError or TypeError for bad input.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("record_custom_event: name must be a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"record_custom_event: name longer than {MAX_NAME_CHARS} characters")
    attrs = dict(attributes or {})
    size = 0
    for key, value in attrs.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("record_custom_event: attributes must map str to str")
        size += len(key.encode()) + len(value.encode())
    if size > MAX_ATTRIBUTE_BYTES:
        raise ValueError(
            f"record_custom_event: attributes are {size} bytes, over {MAX_ATTRIBUTE_BYTES}"
        )
    if not isinstance(request_id, str):
        raise TypeError("record_custom_event: request_id must be a string")
    rt = current_runtime()
    if rt is None or rt.level < _SUMMARY:
        return False
    rt.buffer.offer((raw.CUSTOM, time.time_ns(), request_id, name, attrs))
    return True
