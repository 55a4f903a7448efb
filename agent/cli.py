"""`vllm-audit`: run the agent, query it, switch the audit level.

    vllm-audit agent [--ingest-socket PATH] [--query-address H:P] [--http-address H:P] ...
    vllm-audit query health|stats
    vllm-audit query list [--model M] [--user U] [--state S] [--limit N]
    vllm-audit query get REQUEST_ID [--events]
    vllm-audit set-level off|summary|full|full-with-allowed-sets
    vllm-audit tail [--interval S]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import orjson
from google.protobuf import json_format
from google.protobuf.message import Message
from vllm_audit.v1 import query_pb2 as q
from vllm_audit.v1 import query_pb2_grpc

from .config import LEVELS, AgentConfig, parse_level

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
    a.add_argument("--gpu", choices=("nvml", "none", "fake"))

    for name in ("query", "set-level", "tail"):
        s = sub.add_parser(name)
        s.add_argument("--address", default="127.0.0.1:50051", help="agent query address")
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
        elif name == "set-level":
            s.add_argument("level", choices=list(LEVELS))
        else:
            s.add_argument("--interval", type=float, default=1.0)
            s.add_argument("--count", type=int, default=0, help="stop after N trails (0: never)")
    r = sub.add_parser("replay", help="prove a trail's tokens against its recorded grammar")
    r.add_argument("trail", help="a trail JSON file (query get ID --events) or a request id")
    r.add_argument("--model", required=True, help="the model directory (its tokenizer)")
    r.add_argument("--address", default="127.0.0.1:50051", help="agent query address")
    return p


def _run_replay(args: argparse.Namespace) -> int:
    from .replay import run

    code, result = run(args.trail, args.model, args.address)
    _print(result)
    return code


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


def _run_client(args: argparse.Namespace) -> int:
    with grpc.insecure_channel(args.address) as channel:
        query = query_pb2_grpc.QueryServiceStub(channel)
        if args.command == "set-level":
            control = query_pb2_grpc.ControlServiceStub(channel)
            _print(control.SetAuditLevel(q.SetAuditLevelRequest(level=parse_level(args.level)),  # type: ignore[arg-type]
                                         timeout=10))
        elif args.command == "tail":
            return _tail(query, args.interval, args.count)
        elif args.what == "health":
            _print(query.Health(q.HealthRequest(), timeout=10))
        elif args.what == "stats":
            _print(query.GetStats(q.StatsRequest(), timeout=10))
        elif args.what == "list":
            request = q.ListTrailsRequest(model=args.model, user=args.user, page_size=args.limit,
                                          state=STATES[args.state] if args.state else 0)  # type: ignore[arg-type]
            _print(query.ListTrails(request, timeout=10))
        elif args.what == "get":
            _print(query.GetTrail(q.GetTrailRequest(request_id=args.request_id,
                                                    include_events=args.events), timeout=10))
    return 0


def _tail(query: query_pb2_grpc.QueryServiceStub, interval: float, count: int) -> int:
    seen: set[str] = set()
    shown = 0
    while True:
        token = ""
        while True:
            page = query.ListTrails(q.ListTrailsRequest(page_size=1000, page_token=token), timeout=10)
            for trail in page.trails:
                if trail.state != q.TRAIL_STATE_ACTIVE and trail.request_id not in seen:
                    seen.add(trail.request_id)
                    sys.stdout.write(orjson.dumps(json_format.MessageToDict(
                        trail, preserving_proto_field_name=True)).decode() + "\n")
                    sys.stdout.flush()
                    shown += 1
                    if count and shown >= count:
                        return 0
            token = page.next_page_token
            if not token:
                break
        time.sleep(interval)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "agent":
            return _run_agent(args)
        if args.command == "replay":
            return _run_replay(args)
        return _run_client(args)
    except ValueError as exc:
        print(f"vllm-audit: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"vllm-audit: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
