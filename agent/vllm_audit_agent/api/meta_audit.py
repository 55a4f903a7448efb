"""Meta-audit: every authorised query and control call, and every refused one, becomes a record
in the record log.

"Who looked at patient X's prompts?" has an answer that is itself tamper-evident: the record
(type `access`, topic `<prefix>.access`) says who (subject, role, tenant scope and token id —
a prefix of the token's hash, never the token), from where (transport, peer address, TLS client
identity), what (the RPC and its parameters, each string up to a cap: limits.py), with what
outcome (the gRPC status) and how many trails came back, and when; it is hash-chained and signed
over like every trail record, so `vllm-audit verify` covers it. Refusals (401, 403, 400, 429)
are records too, a flood aggregated into one record per window (refusal_records.py).

Access records have a budget of their own in the record log (`--access-records-max-bytes`):
they never make retention expire request records (records/retention.py), and while their budget
is spent, queries are refused (RESOURCE_EXHAUSTED) instead: the evidence stays.

The interceptor calls the sink after each call, on the event loop; appending is in memory
(the record log's writer makes it durable), so a query never waits on the disk. The sink
never raises into the call: a failure is counted (`meta_audit_errors`). One exception: a
stream (WatchTrails, ExportTrails over gRPC) sends nothing before its "open" record is durable
(`durable`), so an agent killed mid-stream still leaves the record of every stream that sent a
trail; a watch used to start streaming while that record was only queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from vllm_audit_agent.api.gate import NO_PEER, NOT_RECORDED, Peer, Refused
from vllm_audit_agent.api.limits import capped
from vllm_audit_agent.api.refusal_records import RefusalAggregator, peer_host
from vllm_audit_agent.api.tokens import Principal
from vllm_audit_agent.records.chain import RECORD_TYPE_ACCESS
from vllm_audit_agent.records.log import RecordLog

logger = logging.getLogger("vllm_audit.agent")

#: Version of the access record's fields (2: peer, client identity, status; refusals).
ACCESS_SCHEMA_VERSION = 2
#: Seconds between two records of liveness calls by one token from one peer host.
HEALTH_RECORD_SECONDS = 300.0
#: Refusal records may still be written past the access budget, up to this share of it (the
#: refusals of a spent budget are on record too), then they are counted only.
OVERDRAFT = 1.1


class RecordLogAuditSink:
    """Access records go to `records`, within its access budget (RecordLog.access_bytes)."""

    def __init__(self, records: RecordLog, counters: Counter[str]) -> None:
        self.records = records
        self.counters = counters
        self.refusals = RefusalAggregator(self._append)
        self._health_seen: dict[tuple[str, str], float] = {}
        #: The seq of the record the last call appended; None when that append failed.
        self._last_seq: int | None = None
        for name in ("meta_audit_records", "meta_audit_errors", "meta_audit_refusal_records",
                     "meta_audit_refusal_records_dropped"):
            counters[name] += 0

    def __call__(self, principal: Principal, method: str, details: dict[str, Any],
                 result_count: int, peer: Peer = NO_PEER, status: str = "OK",
                 notes: dict[str, Any] | None = None) -> None:
        name = method.rsplit("/", 1)[-1]
        if name in NOT_RECORDED and not self._first_health(principal, peer):
            return
        if self._append({
            # ok, error, or open: a stream's records while it streams (status STREAMING)
            "outcome": {"OK": "ok", "STREAMING": "open"}.get(status, "error"),
            "status": status,
            "subject": principal.subject,
            "role": principal.role,
            "tenant": principal.tenant,
            "token_id": principal.token_id,
            "method": name,
            "service": method.rsplit("/", 2)[-2] if method.count("/") >= 2 else "",
            # grpc, or http: the management API's route that stands for the same method
            "transport": peer.transport,
            "peer": peer.address,
            "client_identity": peer.client_identity,
            "request": capped(details),
            "result_count": result_count,
            **({"result": notes} if notes else {}),
        }):
            self.counters["meta_audit_records"] += 1

    def _first_health(self, principal: Principal, peer: Peer) -> bool:
        """Liveness calls are polled: each token and peer host is recorded once an interval,
        so who probes with which token is on record without a record per probe."""
        now, key = time.monotonic(), (principal.token_id, peer_host(peer.address))
        if len(self._health_seen) > 4096:
            self._health_seen = {k: t for k, t in self._health_seen.items()
                                 if now - t < HEALTH_RECORD_SECONDS}
        seen = self._health_seen.get(key)
        if seen is not None and now - seen < HEALTH_RECORD_SECONDS:
            return False
        self._health_seen[key] = now
        return True

    def refused(self, refusal: Refused, method: str, peer: Peer) -> None:
        self.refusals.note(reason=refusal.reason, method=method.rsplit("/", 1)[-1],
                           status=refusal.code.name, message=refusal.message,
                           transport=peer.transport, peer=peer.address,
                           token_id=refusal.token_id)

    def flush(self, everything: bool = False) -> None:
        """Closes the refusal windows that ended (the agent's sweep calls it; stop: all)."""
        self.refusals.flush(everything=everything)

    async def durable(self, timeout: float) -> bool:
        """Whether the record the last call appended is durable, waiting up to `timeout`
        seconds; False when it failed or is still queued then (e.g. the disk is full). Call
        it right after that call, with no await in between (it reads the last seq first)."""
        target = self._last_seq
        if target is None:
            return False
        deadline = asyncio.get_running_loop().time() + timeout
        while self.records.durable_seq < target:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            await self.records.wait_durable(target - 1, left)
        return True

    def exhausted(self) -> bool:
        return self.records.access_bytes >= self.records.access_budget_bytes

    def _append(self, fields: dict[str, Any]) -> bool:
        if fields.get("outcome") == "refused" and \
                self.records.access_bytes >= self.records.access_budget_bytes * OVERDRAFT:
            # Past the budget's overdraft even refusal records stop (counted): a crowd of
            # peers must not fill the log with the records of its own refusals.
            self.counters["meta_audit_refusal_records_dropped"] += 1
            return False
        self._last_seq = None
        try:
            self._last_seq = self.records.append({"schema": ACCESS_SCHEMA_VERSION, **fields},
                                                 kind=RECORD_TYPE_ACCESS)
            if fields.get("outcome") == "refused":
                self.counters["meta_audit_refusal_records"] += 1
            return True
        except Exception as exc:  # never fail the call that was audited; count it
            self.counters["meta_audit_errors"] += 1
            logger.exception("meta-audit record failed for %s: %r", fields.get("method"), exc)
            return False
