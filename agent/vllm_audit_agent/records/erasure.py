"""Erasure records: the log's signed statement that content keys were destroyed (chain.py
RECORD_TYPE_ERASURE), written before the keys go (the key store follows the log: keys an
erasure record names and that are still present at a start are destroyed then).

cause "request": one data subject's keys, on an admin's call (api/operations.py). The subject
is named by `subject_hmac` (content_keys.py `subject`), never by the user id: the erasure
record is evidence and outlives the subject's metadata, which it must not keep readable.
The tenant is an organisation, not a person, and is named. `content_key_ids` lists the keys.

cause "expiry": content retention: every key whose period ended at or before
`periods_ending_by_ms` (`content_key_count` of them; too many to list).
"""

from __future__ import annotations

from typing import Any

from vllm_audit_agent.records.chain import RECORD_TYPE_ERASURE
from vllm_audit_agent.records.content_keys import CAUSE_EXPIRY, CAUSE_REQUEST


def subject_erasure(log_id: str, time_ms: int, key_ids: list[str], subject_hmac: str,
                    tenant: str, requested_by: str, reason: str) -> dict[str, Any]:
    """The (unsigned) erasure record of one subject's keys."""
    return {"type": RECORD_TYPE_ERASURE, "cause": CAUSE_REQUEST, "log_id": log_id,
            "time_unix_ms": time_ms, "content_key_ids": list(key_ids),
            "content_key_count": len(key_ids), "subject_hmac": subject_hmac, "tenant": tenant,
            "requested_by": requested_by, "reason": reason, "periods_ending_by_ms": 0}


def expiry_erasure(log_id: str, time_ms: int, before_ms: int, count: int,
                   retention_days: float) -> dict[str, Any]:
    """The (unsigned) erasure record of content retention."""
    return {"type": RECORD_TYPE_ERASURE, "cause": CAUSE_EXPIRY, "log_id": log_id,
            "time_unix_ms": time_ms, "content_key_ids": [], "content_key_count": count,
            "subject_hmac": "", "tenant": "", "requested_by": "content retention",
            "reason": f"content older than {retention_days:g} days",
            "periods_ending_by_ms": before_ms}


def erased_by(records: list[dict[str, Any]]) -> tuple[dict[str, str], int]:
    """From a log's erasure records: the key ids erased on request (-> cause) and the
    newest expiry bound (keys whose period ended at or before it are gone): what a reader
    without the key store (the fleet) marks erased."""
    keys: dict[str, str] = {}
    before = 0
    for record in records:
        if record.get("type") != RECORD_TYPE_ERASURE:
            continue
        for key_id in record.get("content_key_ids") or ():
            keys[str(key_id)] = str(record.get("cause") or CAUSE_REQUEST)
        before = max(before, int(record.get("periods_ending_by_ms") or 0))
    return keys, before
