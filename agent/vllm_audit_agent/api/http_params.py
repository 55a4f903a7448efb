"""The management API's parameters, each defined once: the proto field it fills, how its text
(or JSON value) is parsed and checked, and its documented schema and example.

The HTTP routes (http_api.py) parse requests with these and the OpenAPI document (openapi.py)
is generated from the same objects, so what is documented is what is accepted. Maxima come
from limits.py (enforced for both transports by the gate); every integer is range-checked here
as the proto field it fills would be (an int64 or uint32 never overflows into a 500).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from aiohttp import web
from google.protobuf.message import Message

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.errors import ApiError
from vllm_audit_agent.api.limits import DEFAULT_MAX_BYTES, DEFAULT_PAGE_SIZE, MAX_BYTES, MAX_PAGE_SIZE
from vllm_audit_agent.api.operations import CLEAR_CONFIRMATION
from vllm_audit_agent.api.trail_source import USAGE_KEYS
from vllm_audit_agent.config import LEVELS, parse_level
from vllm_audit_agent.records.export import parse_time

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
_STATES = {v.name[len("TRAIL_STATE_"):].lower(): v.number
           for v in q.TrailState.DESCRIPTOR.values if v.number}
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


def bad(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


# -- parsers: (name, value) -> the field's value; each raises ApiError naming the parameter -----
def _text(name: str, text: Any) -> str:
    if not isinstance(text, str):
        raise bad(f"{name} must be a string, got {type(text).__name__}")
    return text


def _int(name: str, text: Any) -> int:
    try:
        value = int(text)
    except ValueError:
        raise bad(f"{name}={text!r} is not an integer") from None
    if value < 0:
        raise bad(f"{name} must be >= 0, got {value}")
    if value > INT32_MAX:  # every integer parameter is an int32 or uint32 field
        raise bad(f"{name} must be <= {INT32_MAX}, got {value}")
    return value


def _bool(name: str, text: Any) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise bad(f"{name}={text!r} is not a boolean (true or false)")


def _time(name: str, text: Any) -> int:
    try:
        value = parse_time(text)
    except (ValueError, OverflowError) as exc:  # "inf" overflows the conversion to int
        raise bad(f"{name}: {exc}") from None
    if not -INT64_MAX <= value <= INT64_MAX:  # an int64 field
        raise bad(f"{name}: {text!r} is out of range")
    return value


def _state(name: str, text: Any) -> int:
    key = text.strip().lower().removeprefix("trail_state_")
    if key not in _STATES:
        raise bad(f"{name}={text!r} is not one of {', '.join(_STATES)}")
    return _STATES[key]


def _level(name: str, value: Any) -> int:
    if not isinstance(value, str):
        raise bad(f'the body needs "{name}": a level name (e.g. "summary")')
    try:
        return parse_level(value)
    except ValueError as exc:
        raise bad(str(exc)) from None


Parser = Callable[[str, Any], Any]


@dataclass(frozen=True)
class Param:
    """One parameter: the proto field it fills, its parser, and what the document says."""
    field: str
    parse: Parser
    schema: Mapping[str, Any]
    description: str
    example: Any
    required: bool = False


def max_bytes(proto_field: str) -> int:
    return MAX_BYTES.get(proto_field, DEFAULT_MAX_BYTES)


def text(proto_field: str, description: str, example: str) -> Param:
    limit = max_bytes(proto_field)
    return Param(proto_field, _text, {"type": "string", "maxLength": limit},
                 f"{description} (at most {limit} bytes of UTF-8)", example)


def integer(proto_field: str, description: str, example: int, maximum: int = INT32_MAX,
            default: int | None = None) -> Param:
    schema: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": maximum}
    if default is not None:
        schema["default"] = default
    return Param(proto_field, _int, schema, description, str(example))


def boolean(proto_field: str, description: str) -> Param:
    return Param(proto_field, _bool, {"type": "boolean", "default": False},
                 f"{description} (true/false, 1/0 or yes/no)", "true")


def timestamp(proto_field: str, description: str, example: str) -> Param:
    return Param(proto_field, _time, {"type": "string"},
                 f"{description}: ISO 8601 (naive is UTC) or unix seconds, or ms if > 1e11",
                 example)


#: Query parameter -> Param: the filters of ListTrails and ExportTrails.
FILTERS: Mapping[str, Param] = {
    "model": text("model", "the served model's name", "llama"),
    "user": text("user", "the caller's user", "alice"),
    "tenant": text("tenant", "the caller's tenant", "acme"),
    "state": Param("state", _state, {"type": "string", "enum": list(_STATES)},
                   "the trail's state", "finished"),
    "finish_reason": text("finish_reason", "why generation stopped", "stop"),
    "since": timestamp("since_unix_ms", "trails created at or after", "2026-01-01T00:00:00Z"),
    "until": timestamp("until_unix_ms", "trails created before", "1767225600"),
    "backend": text("grammar_backend", "the structured-output grammar backend", "xgrammar"),
    "structured_only": boolean("structured_only", "only trails with structured output"),
    "client_request_id": text("client_request_id", "the client's X-Request-Id", "req-1"),
    "x_request_id": text("client_request_id", "alias of client_request_id", "req-1"),
}
PAGING: Mapping[str, Param] = {
    "page_size": integer("page_size", "trails per page", 10, MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE),
    "page_token": text("page_token", "the previous page's next_page_token (opaque, sealed "
                       "to the caller and its filters)", ""),
}
EVENTS: Mapping[str, Param] = {
    "events": boolean("include_events", "include the trail's events"),
    "event_offset": integer("event_offset", "the first event to return", 0),
    "event_limit": integer("event_limit", "events per page (0: as many as fit the agent's "
                           "per-response byte budget)", 10),
}

def _group_by(name: str, text: Any) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in USAGE_KEYS]
    if unknown or len(set(keys)) != len(keys):
        raise bad(f"{name}={text!r}: a comma-separated list of {', '.join(USAGE_KEYS)}, each "
                  "at most once")
    return keys


#: The parameters of GET /aggregates.
AGGREGATES: Mapping[str, Param] = {
    **{name: FILTERS[name] for name in ("tenant", "user", "model", "since", "until")},
    "group_by": Param("group_by", _group_by, {"type": "string"},
                      f"what to group by: a comma-separated list of {', '.join(USAGE_KEYS)} "
                      "(none: one row)", "tenant,day"),
}
#: The parameters of GET /findings (on the finding's window end; page back with `until`).
FINDINGS: Mapping[str, Param] = {
    "rule": text("rule", "the rule that fired", "high_call_rate"),
    "subject": text("subject", "the subject's value (a user, an API key's SHA-256, an "
                    "address, a tenant, a model)", "alice"),
    "subject_kind": text("subject_kind", "user, api_key, client_ip, tenant or model", "user"),
    "severity": text("severity", "low, medium, high or critical", "high"),
    "tenant": FILTERS["tenant"],
    "since": timestamp("since_unix_ms", "findings whose window ended at or after",
                       "2026-01-01T00:00:00Z"),
    "until": timestamp("until_unix_ms", "findings whose window ended before (the next page: "
                       "the oldest window_end_ms seen)", "1767225600"),
    "page_size": integer("page_size", "findings per answer", 10, MAX_PAGE_SIZE,
                         DEFAULT_PAGE_SIZE),
}
#: The `{id}` of /trails/{id}.
TRAIL_ID = text("request_id", "the trail's request id", "cmpl-1")
#: JSON body fields.
CONFIRM: Mapping[str, Param] = {
    "confirm": Param("confirm", _text, {"type": "string", "maxLength": max_bytes("confirm"),
                                        "enum": [CLEAR_CONFIRMATION]},
                     f"must be {CLEAR_CONFIRMATION!r}: clearing is never an accident",
                     CLEAR_CONFIRMATION),
}
LEVEL: Mapping[str, Param] = {
    "level": Param("level", _level, {"type": "string", "enum": list(LEVELS)},
                   "the audit level to set", "summary", required=True),
}


ERASE: Mapping[str, Param] = {
    "user": Param("user", _text, {"type": "string", "maxLength": max_bytes("user")},
                  "the user whose content keys are destroyed", "alice", required=True),
    "tenant": Param("tenant", _text, {"type": "string", "maxLength": max_bytes("tenant")},
                    "the user's tenant (empty: none)", "acme"),
    "reason": Param("reason", _text, {"type": "string", "maxLength": max_bytes("reason")},
                    "why (a ticket, the request's basis); no personal data",
                    "GDPR Art. 17 request #123", required=True),
}


def from_query(request: web.Request, message: Message, known: Mapping[str, Param]) -> Message:
    """Fills `message` from the query string; refuses what it does not know."""
    seen: set[str] = set()
    for name, value in request.query.items():
        if name not in known:
            allowed = ", ".join(known) or "none"
            raise bad(f"unknown query parameter {name!r} for {request.method} {request.path} "
                      f"(known: {allowed})")
        param = known[name]
        if param.field in seen:
            raise bad(f"query parameter {name!r} given more than once")
        seen.add(param.field)
        parsed = param.parse(name, value)
        if isinstance(parsed, list):  # a repeated field (group_by) takes the parsed list
            getattr(message, param.field).extend(parsed)
        else:
            setattr(message, param.field, parsed)
    return message


async def from_body(request: web.Request, message: Message, known: Mapping[str, Param]
                    ) -> Message:
    """Fills `message` from the request's JSON object; refuses malformed JSON, a non-object,
    unknown keys and a missing required one."""
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise bad(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise bad(f"unknown field(s) {unknown} in the request body (known: {sorted(known)})")
    for name, param in known.items():
        if name in body or param.required:
            setattr(message, param.field, param.parse(name, body.get(name)))
    return message
