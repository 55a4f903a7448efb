"""One entry point for every SIEM format: `encode(format, record)` gives the bytes of the
record's copy in that format, or None when the format has no shape for its type (an OCSF or
ECS copy is made of requests and findings; HEC wraps every record).

The chained JSON record is always the source: a copy is made from it, never the other way,
and nothing here changes what the log hashes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from vllm_audit_agent.siem import ecs, hec, ocsf

#: The formats a copy can take (`--kafka-format`, `vllm-audit export --format`).
SIEM_FORMATS = ("ocsf", "ecs", "hec")
#: The record types a structured format maps; others have no copy in it.
REQUEST, FINDING = "request", "finding"

_Encoder = Callable[[dict[str, Any]], dict[str, Any]]
_ENCODERS: dict[str, dict[str, _Encoder]] = {
    "ocsf": {REQUEST: ocsf.request_event, FINDING: ocsf.finding_event},
    "ecs": {REQUEST: ecs.request_document, FINDING: ecs.finding_document},
}


def convert(fmt: str, record: dict[str, Any]) -> dict[str, Any] | None:
    """The record's copy in `fmt` as an object, or None when `fmt` has no shape for it."""
    if fmt == "hec":
        return hec.hec_event(record)
    by_type = _ENCODERS.get(fmt)
    if by_type is None:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(SIEM_FORMATS)}")
    encoder = by_type.get(str(record.get("type") or REQUEST))
    return encoder(record) if encoder is not None else None


def encode(fmt: str, record: dict[str, Any]) -> bytes | None:
    """`convert` as one line of JSON (no newline), or None."""
    converted = convert(fmt, record)
    return orjson.dumps(converted) if converted is not None else None
