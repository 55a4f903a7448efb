"""The fleet's `FindingSource` (findings.py): the findings in its store, the pods' and its own
(fleet/findings.py `stored_findings`), read in a worker thread like every fleet read."""

from __future__ import annotations

import asyncio

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.findings import FindingQuery, list_findings
from vllm_audit_agent.fleet.findings import stored_findings
from vllm_audit_agent.fleet.store import FleetStore


class StoreFindings:
    def __init__(self, store: FleetStore) -> None:
        self.store = store

    def findings(self, query: FindingQuery) -> list[bytes]:
        filters = {"rule": query.rule, "subject": query.subject,
                   "subject_kind": query.subject_kind, "severity": query.severity,
                   "tenant": query.tenant}
        return stored_findings(self.store.backend, self.store.db, filters, query.since_unix_ms,
                               query.until_unix_ms, query.limit)

    async def list_findings(self, request: q.ListFindingsRequest) -> q.ListFindingsResponse:
        """ListFindings over the store (the caller's identity goes with the thread)."""
        return await asyncio.to_thread(list_findings, self, request)
