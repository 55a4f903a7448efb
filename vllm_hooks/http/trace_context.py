"""The W3C Trace Context `traceparent` header, kept as the client sent it when well formed.

The record's OTLP span (the agent's `--otlp-endpoint`) takes its trace id and parent span id
from it, so the audit span joins the caller's trace (and vLLM's own spans when vLLM traces
with the same header). A malformed header is dropped, not repaired: a made-up trace id would
join nothing, and the field must not carry arbitrary client bytes.
"""

from __future__ import annotations

import re

#: version-traceid-parentid-flags, lower-case hex (W3C Trace Context level 1, section 3.2).
#: Versions other than 00 may append fields; those are kept to the first four parts.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16


def traceparent(header: bytes | None) -> str:
    """The header's first four fields when they make a valid traceparent, else ""."""
    if not header or len(header) > 512:
        return ""
    match = _TRACEPARENT.fullmatch(header.strip())
    if match is None:
        return ""
    version, trace_id, span_id, flags = match.groups()
    if version == b"ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return ""
    if version == b"00" and len(header.strip()) != 55:  # version 00 has exactly four fields
        return ""
    return b"-".join((version, trace_id, span_id, flags)).decode("ascii")
