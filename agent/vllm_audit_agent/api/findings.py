"""ListFindings, once, for the agent and the fleet: the detection rules' findings (README
"Detections"), newest first by the end of their window, filtered by rule, subject, severity
and time, a tenant-auditor scoped to its own tenant (scope.py), as canonical JSON records.

Where they come from is a `FindingSource`: the agent's (`LogFindings`: the finding records of
its record log, kept in memory as they are appended and read back once at start, since
findings are few: one per rule and subject per cool-down) or the fleet's
(fleet_findings.py: its store, the pods' findings and its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import orjson

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.errors import ApiError
from vllm_audit_agent.api.limits import DEFAULT_PAGE_SIZE
from vllm_audit_agent.api.limits import check as check_limits
from vllm_audit_agent.api.scope import scoped_tenant
from vllm_audit_agent.detections.finding import SEVERITIES, SUBJECT_KINDS
from vllm_audit_agent.records.chain import RECORD_TYPE_FINDING, canonical
from vllm_audit_agent.records.log import RecordLog

logger = logging.getLogger("vllm_audit.agent")

#: Findings an agent keeps in memory for ListFindings (the newest; older ones stay in its log).
FINDINGS_KEPT = 10_000
#: The bytes every finding record holds (canonical form: sorted keys, no spaces).
FINDING_MARKER = b'"type":"finding"'


@dataclass(frozen=True)
class FindingQuery:
    """What a ListFindings call asks for ("" and 0: any), the caller's tenant scope applied."""
    rule: str = ""
    subject: str = ""
    subject_kind: str = ""
    severity: str = ""
    tenant: str = ""
    since_unix_ms: int = 0
    until_unix_ms: int = 0
    limit: int = DEFAULT_PAGE_SIZE

    def matches(self, finding: Mapping[str, Any]) -> bool:
        subject = finding.get("subject") or {}
        end = int(finding.get("window_end_ms") or 0)
        return ((not self.rule or finding.get("rule") == self.rule)
                and (not self.subject or subject.get("value") == self.subject)
                and (not self.subject_kind or subject.get("kind") == self.subject_kind)
                and (not self.severity or finding.get("severity") == self.severity)
                and (not self.tenant or finding.get("tenant") == self.tenant)
                and (not self.since_unix_ms or end >= self.since_unix_ms)
                and (not self.until_unix_ms or end < self.until_unix_ms))


class FindingSource(Protocol):
    def findings(self, query: FindingQuery) -> list[bytes]:
        """At most `query.limit` matching finding records, newest first by window end."""
        ...


class FindingsApi(Protocol):
    """What the QueryService's ListFindings and GET /findings call (the fleet's answer is an
    awaitable: its store is read in a worker thread)."""

    def list_findings(self, request: q.ListFindingsRequest
                      ) -> q.ListFindingsResponse | Awaitable[q.ListFindingsResponse]: ...


def query_of(request: q.ListFindingsRequest) -> FindingQuery:
    """The request's query; INVALID_ARGUMENT naming a parameter out of its range or set."""
    check_limits(request)
    if request.since_unix_ms < 0 or request.until_unix_ms < 0:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       "since_unix_ms and until_unix_ms must be >= 0 (unix milliseconds)")
    for name, value, allowed in (("severity", request.severity, SEVERITIES),
                                 ("subject_kind", request.subject_kind, SUBJECT_KINDS)):
        if value and value not in allowed:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{name} {value!r} is not one of {', '.join(allowed)}")
    return FindingQuery(request.rule, request.subject, request.subject_kind, request.severity,
                        scoped_tenant(request.tenant), request.since_unix_ms,
                        request.until_unix_ms, request.page_size or DEFAULT_PAGE_SIZE)


def list_findings(source: FindingSource, request: q.ListFindingsRequest
                  ) -> q.ListFindingsResponse:
    return q.ListFindingsResponse(findings=source.findings(query_of(request)))


class NoFindings:
    """An agent without --detections: listing its findings is refused with the reason, not
    answered with an empty list an auditor would read as "nothing detected"."""

    def list_findings(self, request: q.ListFindingsRequest) -> q.ListFindingsResponse:
        query_of(request)  # a malformed request is that first
        raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                       "this agent runs no detection rules (start it with --detections)")


class LogFindings:
    """The agent's findings: those its record log appends from now on (a record listener)
    and, once `load` has read the log, those it held before; the newest FINDINGS_KEPT."""

    def __init__(self, records: RecordLog, kept: int = FINDINGS_KEPT) -> None:
        self.records = records
        #: (seq, canonical bytes, record), oldest first.
        self._kept: deque[tuple[int, bytes, dict[str, Any]]] = deque(maxlen=kept)
        #: What the log held when this started listening: `load` reads up to there.
        self._upto = records.head_seq
        records.add_record_listener(self._appended)
        self._loading: asyncio.Task[int] | None = None

    def start(self) -> None:
        """Reads the log's earlier findings in the background (`load`)."""
        self._loading = asyncio.create_task(self.load(), name="findings-load")

    def stop(self) -> None:
        if self._loading is not None:
            self._loading.cancel()

    def _appended(self, record: dict[str, Any]) -> None:
        if record.get("type") == RECORD_TYPE_FINDING:
            self._kept.append((int(record["seq"]), canonical(record), record))

    async def load(self) -> int:
        """Reads the findings the log held at start (in a worker thread, beside ingest);
        returns how many. A log that cannot be read is logged, never fatal: the findings
        appended from now on are listed all the same."""
        try:
            earlier = await asyncio.to_thread(self._read, self._upto)
        except OSError as exc:
            logger.warning("findings of the record log before this start not read: %s", exc)
            return 0
        newer = list(self._kept)
        self._kept.clear()
        self._kept.extend(earlier)
        self._kept.extend(newer)
        return len(earlier)

    def _read(self, upto: int) -> list[tuple[int, bytes, dict[str, Any]]]:
        found: deque[tuple[int, bytes, dict[str, Any]]] = deque(maxlen=self._kept.maxlen)
        replay: Iterator[tuple[int, bytes]] = self.records.wal.replay()
        try:
            for _, payload in replay:
                if FINDING_MARKER not in payload:
                    continue
                with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    record = orjson.loads(payload)
                    seq = int(record["seq"])
                    if seq > upto:
                        break
                    if record.get("type") == RECORD_TYPE_FINDING:
                        found.append((seq, bytes(payload), record))
        finally:
            close = getattr(replay, "close", None)
            if close is not None:
                close()
        return list(found)

    def list_findings(self, request: q.ListFindingsRequest) -> q.ListFindingsResponse:
        return list_findings(self, request)

    def findings(self, query: FindingQuery) -> list[bytes]:
        matching = [(int(record.get("window_end_ms") or 0), seq, payload)
                    for seq, payload, record in list(self._kept) if query.matches(record)]
        matching.sort(reverse=True)
        return [payload for _, _, payload in matching[:query.limit]]
