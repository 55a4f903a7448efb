"""`vllm-audit`: run the agent, query it, switch the audit level.

    vllm-audit agent [--ingest-socket PATH] [--query-address H:P] [--http-address H:P] ...
    vllm-audit query health|stats
    vllm-audit query list [--model M] [--user U] [--state S] [--limit N]
    vllm-audit query get REQUEST_ID [--events]
    vllm-audit set-level off|summary|full|full-with-allowed-sets
    vllm-audit tail [--interval S]
    vllm-audit verify PATH|--kafka-bootstrap B --public-key PEM [--allow-unsigned-tail]
    vllm-audit export [--data-dir DIR] [--since T] [--until T] [--format jsonl|csv]

verify exits 0 when the chain is intact and covered by checkpoints, 1 at the first break
(named on stderr, the report on stdout as JSON), 2 on a usage error.
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
    a.add_argument("--max-trail-bytes", type=int,
                   help="memory cap of the trail store in bytes (oldest evicted first, counted)")
    a.add_argument("--shutdown-timeout", type=float, dest="shutdown_timeout_seconds",
                   help="seconds the whole stop may take; keep it under the pod's grace period")
    a.add_argument("--gpu", choices=("nvml", "none", "fake"))
    a.add_argument("--signing-key-file", type=Path,
                   help="Ed25519 key for checkpoints (PEM or raw 32 bytes); default: generated "
                        "in the data dir at the first start, public key beside it")
    a.add_argument("--checkpoint-every", type=int, help="records between signed checkpoints")
    a.add_argument("--record-retention-days", type=float,
                   help="the record log keeps records this long (and within its size cap)")
    a.add_argument("--record-log-max-bytes", type=int, help="cap on the record log")

    v = sub.add_parser("verify", help="check a record chain: log directory, export file or Kafka")
    v.add_argument("path", nargs="?", type=Path,
                   help="record log directory (<data_dir>/records) or JSONL export file")
    v.add_argument("--kafka-bootstrap", help="read the chain from Kafka instead")
    v.add_argument("--topic", action="append",
                   help="Kafka topic (repeatable); default <prefix>.requests and .checkpoints")
    v.add_argument("--topic-prefix", default="vllm-audit")
    v.add_argument("--public-key", type=Path, required=True,
                   help="the agent's Ed25519 public key (PEM, raw 32 bytes or hex)")
    v.add_argument("--allow-unsigned-tail", action="store_true",
                   help="records after the last checkpoint are reported, not a failure")
    e = sub.add_parser("export", help="a time range of the record log as JSONL or CSV")
    e.add_argument("--data-dir", type=Path, help="the agent's data dir (default: env or config)")
    e.add_argument("--since", help="ISO 8601 or unix time (recorded time, inclusive)")
    e.add_argument("--until", help="ISO 8601 or unix time (recorded time, exclusive)")
    e.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    e.add_argument("--output", type=Path, help="file to write (default: stdout)")

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
        max_trail_bytes=args.max_trail_bytes, signing_key_file=args.signing_key_file,
        checkpoint_every=args.checkpoint_every, record_retention_days=args.record_retention_days,
        record_log_max_bytes=args.record_log_max_bytes,
        shutdown_timeout_seconds=args.shutdown_timeout_seconds,
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


def _run_verify(args: argparse.Namespace) -> int:
    from .chain import load_public_key
    from .verify import Report, kafka_payloads, order_by_seq, path_payloads, verify_chain

    if (args.path is None) == (args.kafka_bootstrap is None):
        raise ValueError("verify needs exactly one of PATH or --kafka-bootstrap")
    key = load_public_key(args.public_key)
    if args.path is not None:
        report = verify_chain(path_payloads(args.path), key, args.allow_unsigned_tail)
    else:
        topics = args.topic or [f"{args.topic_prefix}.requests",
                                f"{args.topic_prefix}.checkpoints"]
        payloads = asyncio.run(kafka_payloads(args.kafka_bootstrap, topics))
        pre = Report()
        ordered = order_by_seq(payloads, pre)
        report = verify_chain(ordered, key, args.allow_unsigned_tail)
        report.duplicates_collapsed = pre.duplicates_collapsed
        if pre.broken is not None and (report.broken is None or pre.broken.seq <= report.broken.seq):
            report.broken = pre.broken
    _print(report.to_dict())
    if report.broken is not None:
        b = report.broken
        print(f"vllm-audit verify: BROKEN at seq {b.seq}: {b.reason} ({b.detail})", file=sys.stderr)
        return 1
    print(f"vllm-audit verify: intact: {report.records} records, seq {report.first_seq}.."
          f"{report.last_seq}, {report.checkpoints} checkpoints", file=sys.stderr)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from .export import export, parse_time

    data_dir = args.data_dir or AgentConfig.from_env().data_dir
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    records_dir = data_dir / "records"
    if not records_dir.is_dir():
        raise ValueError(f"{records_dir}: no record log there")
    if args.output is None:
        n = export(records_dir, sys.stdout, since, until, args.format)
    else:
        with open(args.output, "w", newline="") as out:
            n = export(records_dir, out, since, until, args.format)
    print(f"vllm-audit export: {n} request records", file=sys.stderr)
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
        if args.command == "verify":
            return _run_verify(args)
        if args.command == "export":
            return _run_export(args)
        return _run_client(args)
    except ValueError as exc:
        print(f"vllm-audit: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"vllm-audit: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
