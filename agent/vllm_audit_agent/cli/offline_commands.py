"""The commands that work on what the agent wrote rather than on the agent: export the record
log or the engine-stats history (from the data dir or Kafka), and replay a trail against its
grammar (the trail from a file, Kafka, or the agent). `verify` and `prove` are in
evidence_commands.py."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson

from vllm_audit.v1 import query_pb2 as q
from vllm_audit.v1 import query_pb2_grpc
from vllm_audit_agent.cli.output import emit
from vllm_audit_agent.cli.parser import PROG
from vllm_audit_agent.cli.query_commands import (
    client_channel,
    get_trail,
    resolve_address,
    rpc_error,
    timeout_of,
)
from vllm_audit_agent.config import AgentConfig

# Each command imports the modules only it needs (replay, verify, export, stats history) when
# it runs, so the others start without them.


def run_replay(args: argparse.Namespace) -> int:
    """Exit 0: proven; 1: a step does not match (named); 2: the trail cannot be replayed."""
    from vllm_audit_agent.records.replay import ReplayError, run

    address = resolve_address(args)
    timeout = timeout_of(args)

    def fetch(request_id: str) -> q.GetTrailResponse:
        with client_channel(args, address) as chan:
            try:
                return get_trail(query_pb2_grpc.QueryServiceStub(chan), request_id, True,
                                 timeout)
            except grpc.RpcError as exc:  # worded as every client command words it
                raise ReplayError("agent: " + rpc_error(exc, address, args.credential)) from None

    fetch_records = None
    if args.kafka_bootstrap:
        from vllm_audit_agent.records.verify import kafka_payloads

        def fetch_records(trail_id: str) -> list[dict[str, Any]]:
            topic = f"{args.topic_prefix}.requests"
            payloads = asyncio.run(kafka_payloads(args.kafka_bootstrap, [topic]))
            return [r for r in map(orjson.loads, payloads) if r.get("trail_id") == trail_id]

    code, result = run(args.trail, args.model, fetch, args.trail_id, fetch_records)
    emit(result, args.output or "json")
    return code


def run_export(args: argparse.Namespace) -> int:
    from vllm_audit_agent.records.export import export, parse_time

    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    source: Path | Callable[[], Iterator[bytes]]  # the data dir's log, or the archive
    if args.archive:
        if args.data_dir:
            raise ValueError("give --data-dir or --archive, not both")
        from vllm_audit_agent.archive.reader import archive_payloads, open_archive
        from vllm_audit_agent.cli.evidence_commands import archive_endpoint

        store = open_archive(args.archive, archive_endpoint(args.archive_endpoint))

        def source() -> Iterator[bytes]:  # read once per pass (CSV makes two)
            return archive_payloads(store)
    else:
        data_dir = args.data_dir or AgentConfig.from_env().data_dir
        source = data_dir / "records"
        if not source.is_dir():
            raise ValueError(f"{source}: no record log there")
    if args.open_content:
        source = _opened(source, _content_keys(args))
    if args.output_file is None:
        n = export(source, sys.stdout, since, until, args.format)
    else:
        with open(args.output_file, "w", newline="") as out:
            n = export(source, out, since, until, args.format)
    print(f"{PROG} export: {n} request records", file=sys.stderr)
    return 0


def run_stats_export(args: argparse.Namespace) -> int:
    from collections import Counter

    from vllm_audit_agent.records.export import parse_time
    from vllm_audit_agent.telemetry.stats_history import in_range, read_history, write_csv, write_jsonl

    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    if since is not None and until is not None and until <= since:
        raise ValueError("--until must be after --since")
    skipped: Counter[str] = Counter()
    if args.kafka_bootstrap:
        if args.data_dir:
            raise ValueError("give --data-dir or --kafka-bootstrap, not both")
        from vllm_audit_agent.records.verify import kafka_payloads

        topic = f"{args.topic_prefix}.engine-stats"
        payloads = asyncio.run(kafka_payloads(args.kafka_bootstrap, [topic]))
        snapshots = [orjson.loads(p) for p in payloads]
        snapshots.sort(key=lambda s: (int(s.get("timestamp_ms", 0)), str(s.get("source_id"))))
    else:
        data_dir = args.data_dir or AgentConfig.from_env().data_dir
        snapshots = list(read_history(data_dir, skipped))
    write = write_csv if args.format == "csv" else write_jsonl
    selected = in_range(snapshots, since, until)
    if args.output_file is None:
        n = write(selected, sys.stdout)
    else:
        with open(args.output_file, "w", newline="") as out:
            n = write(selected, out)
    note = f", {skipped['unreadable_lines']} unreadable lines skipped" if skipped else ""
    print(f"{PROG} stats export: {n} snapshots{note}", file=sys.stderr)
    return 0


def _content_keys(args: argparse.Namespace) -> Any:
    """The content key store `export --open-content` reads (never created here)."""
    from vllm_audit_agent.records.content_keys import ContentKeyStore

    config = AgentConfig.from_env()
    directory = args.content_key_dir or config.content_key_dir or \
        (args.data_dir or config.data_dir) / "content-keys"
    return ContentKeyStore.open_existing(directory)


def _opened(source: Path | Callable[[], Iterator[bytes]], keys: Any
            ) -> Callable[[], Iterator[bytes]]:
    """`source` read with its sealed content opened (records/content.py open_payloads)."""
    from vllm_audit_agent.records.content import open_payloads
    from vllm_audit_agent.records.read_only import read_records

    def read() -> Iterator[bytes]:
        payloads = read_records(source) if isinstance(source, Path) else source()
        return open_payloads(payloads, keys)
    return read
