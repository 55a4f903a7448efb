"""The commands that ask a running agent over its gRPC API: query, findings, set-level,
delete, clear and tail; and the channel (credentials, TLS) and error wording they share with replay."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import grpc
import orjson
from google.protobuf.message import Message

from vllm_audit.v1 import query_pb2 as q
from vllm_audit.v1 import query_pb2_grpc
from vllm_audit_agent.api.operations import CLEAR_CONFIRMATION
from vllm_audit_agent.cli.client import ClientTls, channel
from vllm_audit_agent.cli.credentials import Credential, resolve_credential
from vllm_audit_agent.cli.output import (
    TRAIL_COLUMNS,
    as_dict,
    dumps,
    emit,
    summary_record,
    table,
    trail_rows,
)
from vllm_audit_agent.cli.parser import DEFAULT_QUERY_ADDRESS, STATES
from vllm_audit_agent.config import AgentConfig, env_var, parse_level
from vllm_audit_agent.records.export import parse_time

#: The answer's deadline when --timeout is not given.
DEFAULT_TIMEOUT = 10.0
#: Watch events that carry a new record (tail shows records, not removals from the store).
RECORD_KINDS = (q.WATCH_EVENT_KIND_FINAL, q.WATCH_EVENT_KIND_REVISED)


def resolve_address(args: argparse.Namespace) -> str:
    """--address, else the agent's variable, else its default; kept on `args` so an RPC
    error can name the agent it could not reach."""
    address: str = (args.address or os.environ.get(env_var("query_address"))
                     or DEFAULT_QUERY_ADDRESS)
    args.resolved_address = address
    return address


def timeout_of(args: argparse.Namespace) -> float:
    return DEFAULT_TIMEOUT if args.timeout is None else float(args.timeout)


def run_client(args: argparse.Namespace) -> int:
    address = resolve_address(args)
    output = args.output or "json"
    timeout = timeout_of(args)
    with client_channel(args, address) as chan:
        query = query_pb2_grpc.QueryServiceStub(chan)
        answer: Message
        if args.command == "set-level":
            control = query_pb2_grpc.ControlServiceStub(chan)
            answer = control.SetAuditLevel(
                # the ignore[arg-type] below: an int for a contract enum (stubs want its ValueType)
                q.SetAuditLevelRequest(level=parse_level(args.level)),  # type: ignore[arg-type]
                timeout=timeout)
        elif args.command == "delete":
            answer = query_pb2_grpc.ControlServiceStub(chan).DeleteTrail(
                q.DeleteTrailRequest(request_id=args.request_id), timeout=timeout)
        elif args.command == "erase":
            answer = query_pb2_grpc.ControlServiceStub(chan).EraseSubject(
                q.EraseSubjectRequest(user=args.user, tenant=args.tenant, reason=args.reason),
                timeout=timeout)
        elif args.command == "clear":
            answer = query_pb2_grpc.ControlServiceStub(chan).ClearTrails(
                q.ClearTrailsRequest(confirm=CLEAR_CONFIRMATION), timeout=timeout)
        elif args.command == "tail":
            return tail(query, args.count, output)
        elif args.command == "findings":
            return findings(query, args, timeout, output)
        elif args.what == "health":
            answer = query.Health(q.HealthRequest(), timeout=timeout)
        elif args.what == "stats":
            answer = query.GetStats(q.StatsRequest(), timeout=timeout)
        elif args.what == "list":
            request = q.ListTrailsRequest(model=args.model, user=args.user, page_size=args.limit,
                                          client_request_id=args.client_request_id,
                                          tenant=args.tenant, grammar_backend=args.backend,
                                          # ignore[arg-type]: an int for a contract enum
                                          state=STATES[args.state] if args.state else 0)  # type: ignore[arg-type]
            answer = query.ListTrails(request, timeout=timeout)
        elif args.what == "aggregates":
            answer = query.GetAggregates(aggregates_request(args), timeout=timeout)
        else:
            answer = get_trail(query, args.request_id, args.events, timeout)
        emit(as_dict(answer, with_events=getattr(args, "events", False)), output)
    return 0


#: `findings --output table`: a finding's columns (the subject as kind:value).
FINDING_COLUMNS = ("WINDOW_END", "RULE", "SEVERITY", "SUBJECT", "OBSERVED", "THRESHOLD", "SCOPE",
                   "SUMMARY")


def findings(query: query_pb2_grpc.QueryServiceStub, args: argparse.Namespace, timeout: float,
             output: str) -> int:
    request = q.ListFindingsRequest(
        rule=args.rule, subject=args.subject, subject_kind=args.subject_kind,
        severity=args.severity, tenant=args.tenant, page_size=args.limit,
        since_unix_ms=parse_time(args.since) if args.since else 0,
        until_unix_ms=parse_time(args.until) if args.until else 0)
    found = [orjson.loads(raw) for raw in query.ListFindings(request, timeout=timeout).findings]
    if output == "json":
        emit({"findings": found}, output)
        return 0
    rows = [[datetime.fromtimestamp(int(f.get("window_end_ms") or 0) / 1000, timezone.utc)
             .isoformat(timespec="seconds"), str(f.get("rule", "")), str(f.get("severity", "")),
             f"{f.get('subject', {}).get('kind', '')}:{f.get('subject', {}).get('value', '')}",
             f"{f.get('observed', 0):g}", f"{f.get('threshold', 0):g}", str(f.get("scope", "")),
             str(f.get("summary", ""))] for f in found]
    sys.stdout.write(table(rows, FINDING_COLUMNS) + "\n")
    return 0


def aggregates_request(args: argparse.Namespace) -> q.AggregatesRequest:
    return q.AggregatesRequest(
        tenant=args.tenant, user=args.user, model=args.model,
        group_by=[k.strip() for k in args.group_by.split(",") if k.strip()],
        since_unix_ms=parse_time(args.since) if args.since else 0,
        until_unix_ms=parse_time(args.until) if args.until else 0)


def client_channel(args: argparse.Namespace, address: str) -> grpc.Channel:
    data_dir = args.client_data_dir or Path(os.environ.get(env_var("data_dir"))
                                            or AgentConfig().data_dir)
    credential = resolve_credential(args.token, args.token_file, data_dir, os.environ)
    args.credential = credential  # a refusal for want of one names where it was looked for
    tls = None
    if args.tls_ca or args.client_tls_cert:
        tls = ClientTls(args.tls_ca, args.client_tls_cert, args.client_tls_key,
                        args.tls_server_name)
    return channel(address, credential.token, tls)


def get_trail(query: query_pb2_grpc.QueryServiceStub, request_id: str, events: bool,
              timeout: float) -> q.GetTrailResponse:
    """The whole trail: its events come in pages (a long trail exceeds one message)."""
    request = q.GetTrailRequest(request_id=request_id, include_events=events)
    trail: q.GetTrailResponse = query.GetTrail(request, timeout=timeout)
    while trail.next_event_offset:
        request.event_offset = trail.next_event_offset
        page = query.GetTrail(request, timeout=timeout)
        trail.events.extend(page.events)
        trail.next_event_offset = page.next_event_offset
    return trail


def tail(query: query_pb2_grpc.QueryServiceStub, count: int, output: str) -> int:
    """One final trail per line (its Kafka record, or a table row): the stored ones first,
    then each as it becomes final, from one server stream (no re-listing)."""
    if output == "table":
        sys.stdout.write(table([], TRAIL_COLUMNS) + "\n")
    stream = query.WatchTrails(q.WatchTrailsRequest(replay=True))
    records = (item for item in stream if item.kind in RECORD_KINDS)  # not evictions/deletes
    for shown, item in enumerate(records, 1):
        record = summary_record(item.trail)
        line = (dumps(record, indent=False) if output == "json"
                else "  ".join(trail_rows([record])[0]))
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if count and shown >= count:
            stream.cancel()
            return 0
    return 0


def rpc_error(exc: grpc.RpcError, address: str, credential: Credential | None = None) -> str:
    code = exc.code()
    details = exc.details()
    if code == grpc.StatusCode.UNAUTHENTICATED and credential is not None \
            and credential.token is None:
        return f"UNAUTHENTICATED: {details}; {credential.missing()}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"UNAVAILABLE: no agent answers at {address} ({details})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"DEADLINE_EXCEEDED: the agent at {address} did not answer in time"
    return f"{code.name}: {details}"
