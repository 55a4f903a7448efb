"""A record's row in the fleet store: the columns an audit query filters and sums on, taken
from its canonical bytes (any record type; fields a type lacks are empty)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import pyarrow as pa

from vllm_audit_agent.fleet.schema import RECORD_COLUMNS

_ARROW_TYPES = {"seq": pa.uint64(), "ts": pa.timestamp("ms"),
                "recorded": pa.timestamp("ms"), "revision": pa.uint32(),
                "status_code": pa.uint16(), "is_error": pa.uint8(), "input_tokens": pa.uint32(),
                "output_tokens": pa.uint32(), "has_content": pa.uint8()}
SCHEMA = pa.schema([(name, _ARROW_TYPES.get(name, pa.string())) for name in RECORD_COLUMNS])


def _int(value: Any, high: int) -> int:
    try:
        return max(0, min(int(value or 0), high))
    except (TypeError, ValueError):
        return 0


def record_row(record: dict[str, Any], payload: bytes, now_ms: int) -> tuple[Any, ...]:
    """The column values of one record, in RECORD_COLUMNS order. `recorded` (what partitions
    and retention go by) is when the agent wrote it; `now_ms` for a record without that time."""
    kind = str(record.get("type") or "request")
    ts = record.get("timestamp_ms") or record.get("time_unix_ms") or record.get(
        "recorded_unix_ms") or 0
    recorded = _int(record.get("recorded_unix_ms"), 2**53) or now_ms
    status = _int(record.get("status_code"), 65535)
    error = bool(record.get("error")) or status >= 400
    return (
        str(record.get("log_id") or ""), _int(record.get("seq"), 2**63), kind, _int(ts, 2**53),
        recorded,
        str(record.get("trail_id") or ""), _int(record.get("revision"), 2**32 - 1),
        str(record.get("tenant") or ""), str(record.get("user") or ""),
        str(record.get("model") or record.get("gen_ai.request.model") or ""),
        str(record.get("state") or ""), str(record.get("client_request_id") or ""),
        str(record.get("request_id") or ""), status, int(error),
        _int(record.get("gen_ai.usage.input_tokens") or record.get("prompt_tokens"), 2**32 - 1),
        _int(record.get("gen_ai.usage.output_tokens") or record.get("completion_tokens"),
             2**32 - 1),
        int(bool(record.get("prompt") or record.get("output"))), payload.decode(),
    )


def parse(payload: bytes) -> dict[str, Any] | None:
    """The record in `payload`, or None when it is not a JSON object with a `seq`."""
    try:
        record = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        return None
    return record


def to_arrow(rows: Iterable[tuple[Any, ...]]) -> pa.Table:
    columns = list(zip(*rows, strict=True)) or [()] * len(RECORD_COLUMNS)
    return pa.Table.from_arrays([pa.array(col, type=field.type)
                                 for col, field in zip(columns, SCHEMA, strict=True)],
                                schema=SCHEMA)
