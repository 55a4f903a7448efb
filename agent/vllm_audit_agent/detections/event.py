"""What the rules read of a record: one request (its first revision) or one refused access.

A request record is read at revision 0 only: a later revision of the same trail (a late half
after a forced record) is the same call, and counting it again would double its rate. An
access record counts when it is a refused credential (`unauthenticated`, `permission_denied`,
`backoff`), weighted by the refusals it aggregates (api/refusal_records.py writes one record
per flood window with their count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Access refusals that are failed or refused credentials (api/gate.py REFUSALS).
AUTH_REFUSALS = frozenset({"unauthenticated", "permission_denied", "backoff"})
AUTH_REJECTED = "AUTH_STATUS_REJECTED"


@dataclass(slots=True)
class Event:
    time_ms: int
    #: The request's trail id (evidence), or `seq:<n>` for an access record.
    ref: str
    user: str = ""
    api_key: str = ""
    client_ip: str = ""
    tenant: str = ""
    model: str = ""
    status_code: int = 0
    error: bool = False
    finish_reason: str = ""
    output_tokens: int = 0
    total_tokens: int = 0
    auth_failed: bool = False
    #: None: the record carries no content signals (not computed); else whether any matched.
    flagged: bool | None = None
    #: Calls this event stands for (an aggregated refusal record: its count).
    weight: int = 1
    #: An API call (a request record), not an access refusal: the rates count these.
    is_request: bool = True

    def subject(self, kind: str) -> str:
        return str(getattr(self, kind))


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _flagged(signals: Any) -> bool | None:
    """Any non-zero flag in the record's content signals (prompt or output)."""
    if not isinstance(signals, dict):
        return None
    for side in ("prompt", "output"):
        flags = signals.get(side)
        if isinstance(flags, dict) and any(_int(count) for count in flags.values()):
            return True
    return False


def event_of(record: dict[str, Any]) -> Event | None:
    """The event a record stands for, or None when no rule reads it."""
    kind = record.get("type")
    if kind == "request":
        if _int(record.get("revision")):
            return None
        status = _int(record.get("status_code"))
        prompt, output = _int(record.get("prompt_tokens")), _int(record.get("completion_tokens"))
        return Event(
            _int(record.get("created_unix_ms") or record.get("recorded_unix_ms")),
            str(record.get("trail_id") or record.get("request_id") or ""),
            user=str(record.get("user") or ""), api_key=str(record.get("api_key_sha256") or ""),
            client_ip=str(record.get("client_ip") or ""), tenant=str(record.get("tenant") or ""),
            model=str(record.get("model") or ""), status_code=status,
            error=bool(record.get("error")), finish_reason=str(record.get("finish_reason") or ""),
            output_tokens=output, total_tokens=prompt + output,
            auth_failed=record.get("auth_decision") == AUTH_REJECTED or status in (401, 403),
            flagged=_flagged(record.get("content_signals")))
    if kind == "access" and record.get("outcome") == "refused" \
            and record.get("reason") in AUTH_REFUSALS:
        return Event(_int(record.get("recorded_unix_ms")), f"seq:{_int(record.get('seq'))}",
                     client_ip=str(record.get("peer") or ""), auth_failed=True,
                     weight=max(1, _int(record.get("count"))), is_request=False)
    return None
