"""Splunk HTTP Event Collector events: one JSON object per line, ready for
`/services/collector/event` (HEC takes several concatenated events per request).

`time` is epoch seconds with milliseconds (HEC's format), `sourcetype` names the shape,
`event` is the chained record as it is (Splunk's JSON extraction indexes every field, so
searches use the record's own names, as the Sigma rules do).
"""

from __future__ import annotations

from typing import Any

SOURCETYPE = "vllm:audit"
SOURCE = "vllm-audit"


def hec_event(record: dict[str, Any], index: str | None = None) -> dict[str, Any]:
    """The HEC envelope of one record (any type); `host` is the log's id (one per agent)."""
    when = record.get("timestamp_ms") or record.get("window_end_ms") or record.get(
        "recorded_unix_ms") or 0
    event: dict[str, Any] = {"time": round(int(when) / 1000, 3), "sourcetype": SOURCETYPE,
                             "source": f"{SOURCE}:{record.get('type') or 'request'}",
                             "host": str(record.get("log_id") or ""), "event": record}
    if index:
        event["index"] = index
    return event
