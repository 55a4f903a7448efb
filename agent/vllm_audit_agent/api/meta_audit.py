"""Meta-audit: every authorised query and control call becomes a record in the record log.

"Who looked at patient X's prompts?" has an answer that is itself tamper-evident: the record
(type `access`, topic `<prefix>.access`) says who (subject, role, tenant scope and token id —
a prefix of the token's hash, never the token), what (the RPC and its filters), how many
trails came back, and when; it is hash-chained and signed over like every trail record, so
`vllm-audit verify` covers it.

The interceptor calls the sink after each call, on the event loop; appending is in memory
(the record log's writer makes it durable), so a query never waits on the disk. The sink
never raises into the call: a failure is counted (`meta_audit_errors`).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from vllm_audit_agent.api.tokens import Principal
from vllm_audit_agent.records.chain import RECORD_TYPE_ACCESS
from vllm_audit_agent.records.log import RecordLog

logger = logging.getLogger("vllm_audit.agent")

#: Version of the access record's fields.
ACCESS_SCHEMA_VERSION = 1
#: Calls that read no audit data and are polled (liveness): recording them would drown the
#: log in noise. Every other authorised call is recorded.
NOT_RECORDED = frozenset({"Health"})


class RecordLogAuditSink:
    def __init__(self, records: RecordLog, counters: Counter[str]) -> None:
        self.records = records
        self.counters = counters
        counters["meta_audit_records"] += 0
        counters["meta_audit_errors"] += 0

    def __call__(self, principal: Principal, method: str, details: dict[str, Any],
                 result_count: int, transport: str = "grpc") -> None:
        name = method.rsplit("/", 1)[-1]
        if name in NOT_RECORDED:
            return
        try:
            self.records.append({
                "schema": ACCESS_SCHEMA_VERSION,
                "subject": principal.subject,
                "role": principal.role,
                "tenant": principal.tenant,
                "token_id": principal.token_id,
                "method": name,
                "service": method.rsplit("/", 2)[-2] if method.count("/") >= 2 else "",
                # grpc, or http: the management API's route that stands for the same method
                "transport": transport,
                "request": details,
                "result_count": result_count,
            }, kind=RECORD_TYPE_ACCESS)
            self.counters["meta_audit_records"] += 1
        except Exception as exc:  # never fail the call that was audited; count it
            self.counters["meta_audit_errors"] += 1
            logger.exception("meta-audit record failed for %s by %s: %r", method,
                             principal.subject, exc)
