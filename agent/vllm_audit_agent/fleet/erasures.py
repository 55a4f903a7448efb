"""What the erasure records in the fleet store erased, for the fleet's views of sealed content.

The fleet never holds content keys (they stay with each agent, apart from its log), so it
never shows a prompt or output that an agent sealed: its views show the sealed form (the
ciphertext) while the key may still live, and `erased: true` with why (`erasure`: "request"
or "expiry") once the log's erasure records (records/erasure.py, on the requests topic like
every record) say the key is gone, the ciphertext left out as the agent's views do
(records/content.py `erased_content`). Exports stay exactly as stored: they must verify.

Key ids are random (content_keys.py), so a key erased on request is erased whatever log
names it; an expiry bound is of the agent that wrote it, so it applies to that log's records.

Known erasures are read from the store at most every `refresh_s` and told at once by the
consumer of this process (`note`): with several fleet replicas, one that did not consume the
erasure's partition marks the content erased within `refresh_s`. Until then its views show
ciphertext, which no one can open: the marker is a courtesy, the destroyed key is the erasure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from vllm_audit_agent.fleet.store import FleetStore
from vllm_audit_agent.records.chain import RECORD_TYPE_ERASURE
from vllm_audit_agent.records.content import erased_content, is_sealed
from vllm_audit_agent.records.content_keys import CAUSE_EXPIRY
from vllm_audit_agent.records.erasure import erased_by

#: Seconds between two reads of the store's erasure records (only when a view asks).
REFRESH_S = 10.0


class FleetErasures:
    def __init__(self, store: FleetStore, refresh_s: float = REFRESH_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.clock = clock
        self._lock = threading.Lock()
        self._records: dict[tuple[str, int], dict[str, Any]] = {}
        self._keys: dict[str, str] = {}
        self._before: dict[str, int] = {}
        self._read_at: float | None = None

    def note(self, records: Iterable[dict[str, Any]]) -> None:
        """Erasure records among `records` (what this process just stored) count from now."""
        with self._lock:
            if self._add(records):
                self._derive()

    def cause(self, record: dict[str, Any]) -> str | None:
        """Why the record's sealed content is unreadable ("request", "expiry"), None when it
        is not sealed or its key may still live."""
        if not is_sealed(record):
            return None
        self._refresh()
        content = record["content"]
        with self._lock:
            cause = self._keys.get(str(content.get("key_id")))
            before = self._before.get(str(record.get("log_id") or ""), 0)
        if cause is not None:
            return cause
        period_end = int(content.get("period_end_ms") or 0)
        return CAUSE_EXPIRY if 0 < period_end <= before else None

    def view(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record as the fleet shows it: sealed content marked erased once its key is
        gone, otherwise as stored."""
        cause = self.cause(record)
        if cause is None:
            return record
        return {**record, "content": erased_content(record["content"], cause)}

    def _refresh(self) -> None:
        now = self.clock()
        with self._lock:
            if self._read_at is not None and now - self._read_at < self.refresh_s:
                return
            self._read_at = now
        rows = self.store.backend.rows(
            f"SELECT record FROM {self.store.db}.records WHERE type = {{type:String}} "
            "LIMIT 1 BY log_id, seq", {"type": RECORD_TYPE_ERASURE})
        found = []
        for row in rows:
            raw = row["record"]
            try:
                found.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                continue  # emptied by a TTL, or not a record: it names nothing
        with self._lock:
            if self._add(found):
                self._derive()

    def _add(self, records: Iterable[dict[str, Any]]) -> bool:
        added = False
        for record in records:
            if not isinstance(record, dict) or record.get("type") != RECORD_TYPE_ERASURE:
                continue
            key = (str(record.get("log_id") or ""), int(record.get("seq") or 0))
            if key not in self._records:
                self._records[key] = record
                added = True
        return added

    def _derive(self) -> None:
        by_log: dict[str, list[dict[str, Any]]] = {}
        for (log_id, _), record in self._records.items():
            by_log.setdefault(log_id, []).append(record)
        keys: dict[str, str] = {}
        before: dict[str, int] = {}
        for log_id, records in by_log.items():
            erased, bound = erased_by(records)
            keys.update(erased)
            before[log_id] = bound
        self._keys, self._before = keys, before
