"""`vllm-audit`: run the agent, query it, switch the audit level.

    vllm-audit agent [--ingest-socket PATH] [--query-address H:P] [--http-address H:P] ...
    vllm-audit query health|stats
    vllm-audit query list [--model M] [--user U] [--state S] [--limit N]
    vllm-audit query get REQUEST_ID [--events]
    vllm-audit set-level off|summary|full|full-with-allowed-sets
    vllm-audit tail [--count N]

Client commands need a credential: --token, $VLLM_AUDIT_TOKEN, --token-file, else the local
agent's admin token in its data dir (--data-dir, $VLLM_AUDIT_DATA_DIR, /var/lib/vllm-audit).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import orjson
from google.protobuf import json_format
from google.protobuf.message import Message
from vllm_audit.v1 import query_pb2 as q
from vllm_audit.v1 import query_pb2_grpc

from .auth import resolve_client_token
from .client import ClientTls, channel
from .config import ENV_DATA_DIR, LEVELS, AgentConfig, parse_level

STATES = {"active": q.TRAIL_STATE_ACTIVE, "finished": q.TRAIL_STATE_FINISHED,
          "aborted": q.TRAIL_STATE_ABORTED, "failed": q.TRAIL_STATE_FAILED}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm-audit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("agent", help="run the sidecar agent")
    a.add_argument("--ingest-socket", type=Path)
    a.add_argument("--query-address")
    a.add_argument("--http-address")
    a.add_argument("--data-dir", type=Path)
    a.add_argument("--wal-fsync", choices=("always", "batch", "never"))
    a.add_argument("--wal-max-bytes", type=int,
                   help="cap on the WAL (what is not yet delivered); past it batches are refused")
    a.add_argument("--wal-segment-bytes", type=int, help="WAL segment size (0: derived)")
    a.add_argument("--kafka-bootstrap")
    a.add_argument("--kafka-topic-prefix")
    a.add_argument("--audit-level", choices=list(LEVELS))
    a.add_argument("--linger-seconds", type=float)
    a.add_argument("--max-trails", type=int)
    a.add_argument("--max-trail-bytes", type=int,
                   help="memory cap of the trail store in bytes (oldest evicted first, counted)")
    a.add_argument("--shutdown-timeout", type=float, dest="shutdown_timeout_seconds",
                   help="seconds the whole stop may take; keep it under the pod's grace period")
    a.add_argument("--gpu", choices=("nvml", "none", "fake"))
    # -- security (agent/auth.py) --
    a.add_argument("--auth-tokens-file", type=Path,
                   help="YAML/JSON list of {sha256, subject, role, tenant}; without it the agent "
                        "makes <data-dir>/admin.token at first start")
    a.add_argument("--tls-cert", type=Path, help="PEM certificate of the query listener")
    a.add_argument("--tls-key", type=Path, help="PEM private key of the query listener")
    a.add_argument("--tls-client-ca", type=Path, help="mutual TLS: client certificates' CA")
    a.add_argument("--allow-insecure-remote", action="store_true", default=None,
                   help="allow a plaintext query listener beyond loopback")
    a.add_argument("--ingest-socket-group", help="group of the ingest socket (mode 0660)")
    a.add_argument("--metrics-token-file", type=Path, help="/metrics needs this bearer token")
    a.add_argument("--level-apply-deadline", type=float, dest="level_apply_deadline_seconds",
                   help="seconds a hook has to apply a new level before it counts as mismatch")

    for name in ("query", "set-level", "tail"):
        s = sub.add_parser(name)
        s.add_argument("--address", default="127.0.0.1:50051", help="agent query address")
        s.add_argument("--token", help="bearer token (else $VLLM_AUDIT_TOKEN, --token-file)")
        s.add_argument("--token-file", type=Path)
        s.add_argument("--data-dir", type=Path,
                       help="a local agent's data dir, to read its admin.token")
        s.add_argument("--tls-ca", type=Path, help="use TLS; verify the agent against this CA")
        s.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
        s.add_argument("--tls-key", type=Path, help="client key (mutual TLS)")
        s.add_argument("--tls-server-name", help="name in the agent's certificate")
        if name == "query":
            qs = s.add_subparsers(dest="what", required=True)
            qs.add_parser("health")
            qs.add_parser("stats")
            ls = qs.add_parser("list")
            ls.add_argument("--model", default="")
            ls.add_argument("--user", default="")
            ls.add_argument("--state", choices=list(STATES))
            ls.add_argument("--limit", type=int, default=50)
            g = qs.add_parser("get")
            g.add_argument("request_id")
            g.add_argument("--events", action="store_true")
            ls.add_argument("--tenant", default="")
        elif name == "set-level":
            s.add_argument("level", choices=list(LEVELS))
        else:
            s.add_argument("--count", type=int, default=0, help="stop after N trails (0: never)")
    return p


def _print(message: Message | dict[str, Any] | list[Any]) -> None:
    if isinstance(message, Message):
        message = json_format.MessageToDict(message, preserving_proto_field_name=True)
    sys.stdout.write(orjson.dumps(message, option=orjson.OPT_INDENT_2).decode() + "\n")


def _run_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = AgentConfig.from_env(
        ingest_socket=args.ingest_socket, query_address=args.query_address,
        http_address=args.http_address, data_dir=args.data_dir, wal_fsync=args.wal_fsync,
        wal_max_bytes=args.wal_max_bytes, wal_segment_bytes=args.wal_segment_bytes,
        kafka_bootstrap=args.kafka_bootstrap, kafka_topic_prefix=args.kafka_topic_prefix,
        audit_level=parse_level(args.audit_level) if args.audit_level else None,
        linger_seconds=args.linger_seconds, max_trails=args.max_trails, gpu=args.gpu,
        max_trail_bytes=args.max_trail_bytes,
        shutdown_timeout_seconds=args.shutdown_timeout_seconds,
        auth_tokens_file=args.auth_tokens_file, tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca, allow_insecure_remote=args.allow_insecure_remote,
        ingest_socket_group=args.ingest_socket_group, metrics_token_file=args.metrics_token_file,
        level_apply_deadline_seconds=args.level_apply_deadline_seconds,
    )
    from .server import serve

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop.wait())

    asyncio.run(main())
    return 0


def _client_channel(args: argparse.Namespace) -> grpc.Channel:
    data_dir = args.data_dir or Path(os.environ.get(ENV_DATA_DIR) or AgentConfig().data_dir)
    token = resolve_client_token(args.token, args.token_file, data_dir, os.environ)
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = ClientTls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    return channel(args.address, token, tls)


def _run_client(args: argparse.Namespace) -> int:
    with _client_channel(args) as chan:
        query = query_pb2_grpc.QueryServiceStub(chan)
        if args.command == "set-level":
            control = query_pb2_grpc.ControlServiceStub(chan)
            _print(control.SetAuditLevel(q.SetAuditLevelRequest(level=parse_level(args.level)),  # type: ignore[arg-type]
                                         timeout=10))
        elif args.command == "tail":
            return _tail(query, args.count)
        elif args.what == "health":
            _print(query.Health(q.HealthRequest(), timeout=10))
        elif args.what == "stats":
            _print(query.GetStats(q.StatsRequest(), timeout=10))
        elif args.what == "list":
            request = q.ListTrailsRequest(model=args.model, user=args.user, page_size=args.limit,
                                          tenant=args.tenant,
                                          state=STATES[args.state] if args.state else 0)  # type: ignore[arg-type]
            _print(query.ListTrails(request, timeout=10))
        elif args.what == "get":
            _print(_get_trail(query, args.request_id, args.events))
    return 0


def _get_trail(query: query_pb2_grpc.QueryServiceStub, request_id: str, events: bool
               ) -> q.GetTrailResponse:
    """The whole trail: its events come in pages (a long trail exceeds one message)."""
    request = q.GetTrailRequest(request_id=request_id, include_events=events)
    trail: q.GetTrailResponse = query.GetTrail(request, timeout=10)
    while trail.next_event_offset:
        request.event_offset = trail.next_event_offset
        page = query.GetTrail(request, timeout=10)
        trail.events.extend(page.events)
        trail.next_event_offset = page.next_event_offset
    return trail


def _tail(query: query_pb2_grpc.QueryServiceStub, count: int) -> int:
    """Final trails as they come (the stored ones first), from one server stream."""
    for shown, item in enumerate(query.WatchTrails(q.WatchTrailsRequest(replay=True)), 1):
        sys.stdout.write(orjson.dumps(json_format.MessageToDict(
            item.trail, preserving_proto_field_name=True)).decode() + "\n")
        sys.stdout.flush()
        if count and shown >= count:
            return 0
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "agent":
            return _run_agent(args)
        return _run_client(args)
    except ValueError as exc:
        print(f"vllm-audit: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"vllm-audit: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
