"""How `vllm-audit` prints what it gets: JSON in the Kafka record's shape, or a table.

A trail is shown as its Kafka record wherever it appears (a list, one trail, `tail`). The
record's grammar proof (`grammar_events`, `grammar_events_omitted`) is made from the trail's
events: `query get ID --events` fills it from the events it read, as the agent does for the
record it writes; a summary alone (`query list`, `tail`, `query get` without `--events`) cannot,
and leaves the two fields out rather than show an empty proof for a trail that has one.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
from google.protobuf.message import Message

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.model.record import (
    GRAMMAR_PROOF_LEVELS,
    grammar_proof,
    message_to_dict,
    trail_record,
)

#: The columns `--output table` shows for a list of trails (the JSON has every field).
TRAIL_COLUMNS = ("request_id", "state", "model", "user", "status_code", "finish_reason",
                 "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):  # as protobuf's JSON mapping does
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any, indent: bool = True) -> str:
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(value, option=option | orjson.OPT_NON_STR_KEYS, default=_jsonable).decode()


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        if not value and prefix:
            yield prefix, ""
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for i, item in enumerate(value):
            yield from flatten(item, f"{prefix}[{i}]")
    elif isinstance(value, list):
        yield prefix, ",".join(str(v) for v in value)
    elif isinstance(value, bytes):
        yield prefix, _jsonable(value)
    else:
        yield prefix, str(value)


def table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    every = [list(header)] if header else []
    every += [list(r) for r in rows]
    if not every:
        return ""
    widths = [max(len(r[i]) for r in every) for i in range(len(every[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in every)


def trail_rows(trails: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [[str(t.get(c, "")) for c in TRAIL_COLUMNS] for t in trails]


def emit(value: dict[str, Any], output: str) -> None:
    if output == "json":
        text = dumps(value)
    elif isinstance(value.get("trails"), list):
        text = table(trail_rows(value["trails"]), TRAIL_COLUMNS)
        if value.get("next_page_token"):
            text += f"\n(more: next page token {value['next_page_token']})"
    else:
        text = table(list(flatten(value)), ("FIELD", "VALUE"))
    sys.stdout.write(text + "\n")


#: The record's fields only a trail's events fill (model/record.py grammar_proof).
PROOF_FIELDS = ("grammar_events", "grammar_events_omitted")


def summary_record(summary: q.TrailSummary) -> dict[str, Any]:
    """A trail's record from its summary alone: without the fields its events would fill."""
    record = trail_record(summary)
    for name in PROOF_FIELDS:
        del record[name]
    return record


def trail_with_events(summary: q.TrailSummary, events: Sequence[pb.Event]) -> dict[str, Any]:
    """The record of a trail read with its events: the grammar proof as the agent makes it for
    a structured trail at levels full and up, and without a cap (every event is printed
    beside it anyway)."""
    record = trail_record(summary)
    if summary.grammar_backend and summary.audit_level in GRAMMAR_PROOF_LEVELS:
        record["grammar_events"], record["grammar_events_omitted"] = grammar_proof(
            (e.SerializeToString() for e in events), max_bytes=sys.maxsize)
    return record


def as_dict(message: Message, with_events: bool = False) -> dict[str, Any]:
    # A trail is shown as its Kafka record, wherever it appears.
    if isinstance(message, q.ListTrailsResponse):
        return {"trails": [summary_record(t) for t in message.trails],
                "next_page_token": message.next_page_token}
    if isinstance(message, q.GetTrailResponse):
        if not with_events:
            return {"summary": summary_record(message.summary)}
        return {"summary": trail_with_events(message.summary, message.events),
                "events": [message_to_dict(e) for e in message.events]}
    return message_to_dict(message)
