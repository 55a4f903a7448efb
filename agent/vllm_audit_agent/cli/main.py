"""`vllm-audit`: run the agent, query it, switch the audit level.

    vllm-audit agent [--ingest-socket PATH] [--query-address H:P] [--http-address H:P] ...
    vllm-audit query health|stats
    vllm-audit query list [--model M] [--user U] [--state S] [--limit N]
    vllm-audit query get REQUEST_ID [--events]
    vllm-audit set-level off|summary|full|full-with-allowed-sets
    vllm-audit delete REQUEST_ID        (admin: the query store only; records stay)
    vllm-audit clear --confirm          (admin: every final trail of the query store)
    vllm-audit tail [--count N]
    vllm-audit verify PATH|--kafka-bootstrap B --public-key PEM [--allow-unsigned-tail]
    vllm-audit export [--data-dir DIR] [--since T] [--until T] [--format jsonl|csv]

verify exits 0 when the chain is intact and covered by checkpoints, 1 at the first break
(named on stderr, the report on stdout as JSON), 2 on a usage error.

The client options (--address, --output, --timeout, credentials, TLS) go before or after the
subcommand. Client commands need a credential: --token, $VLLM_AUDIT_TOKEN, --token-file
($VLLM_AUDIT_TOKEN_FILE), else the local agent's admin token in its data dir (--data-dir,
$VLLM_AUDIT_DATA_DIR, default /var/lib/vllm-audit).
JSON output has the shape of the Kafka record: proto field names, every field present, enum
names, 64-bit integers as numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.metadata
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import orjson
from google.protobuf.message import Message

from vllm_audit.v1 import query_pb2 as q
from vllm_audit.v1 import query_pb2_grpc
from vllm_audit_agent.api.auth import ENV_TOKEN, ENV_TOKEN_FILE, resolve_client_token
from vllm_audit_agent.api.operations import CLEAR_CONFIRMATION
from vllm_audit_agent.cli.client import ClientTls, channel
from vllm_audit_agent.config import (
    CONDITIONS as READY_CONDITIONS,
)
from vllm_audit_agent.config import (
    ENV_ALLOW_INSECURE_REMOTE,
    ENV_AUDIT_LEVEL,
    ENV_AUTH_TOKENS_FILE,
    ENV_DATA_DIR,
    ENV_GPU,
    ENV_GPU_SCOPE,
    ENV_HTTP_ADDRESS,
    ENV_HTTP_TLS,
    ENV_INGEST_SOCKET,
    ENV_INGEST_SOCKET_GROUP,
    ENV_KAFKA_BOOTSTRAP,
    ENV_KAFKA_TOPIC_PREFIX,
    ENV_LEVEL_APPLY_DEADLINE,
    ENV_LINGER_SECONDS,
    ENV_MAX_BATCH_BYTES,
    ENV_MAX_MESSAGE_BYTES,
    ENV_MAX_TRAIL_BYTES,
    ENV_MAX_TRAIL_EVENTS,
    ENV_MAX_TRAILS,
    ENV_METRICS_TOKEN_FILE,
    ENV_QUERY_ADDRESS,
    ENV_READY_REQUIRES,
    ENV_SHUTDOWN_TIMEOUT,
    ENV_TLS_CERT,
    ENV_TLS_CLIENT_CA,
    ENV_TLS_KEY,
    ENV_WAL_FSYNC,
    ENV_WAL_MAX_BYTES,
    ENV_WAL_SEGMENT_BYTES,
    GPU_READERS,
    GPU_SCOPES,
    LEVELS,
    WAL_FSYNC_POLICIES,
    AgentConfig,
    parse_address,
    parse_level,
    parse_required,
)
from vllm_audit_agent.model.record import message_to_dict, trail_record
from vllm_audit_agent.records.log import TOPICS
from vllm_audit_agent.storage.datadir import DataDirLocked

PROG = "vllm-audit"
DISTRIBUTION = "vllm-audit"
DEFAULT_QUERY_ADDRESS = "127.0.0.1:50051"
OUTPUTS = ("json", "table")
#: Derived from the contract's TrailState (one definition): active, finished, aborted, ...
STATES = {name[len("TRAIL_STATE_"):].lower(): number
          for name, number in q.TrailState.items() if number != q.TRAIL_STATE_UNSPECIFIED}
#: The columns `--output table` shows for a list of trails (the JSON has every field).
TRAIL_COLUMNS = ("request_id", "state", "model", "user", "status_code", "finish_reason",
                 "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms")


def version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # a source checkout that was never installed
        return "unknown"


def _client_options(top_level: bool) -> argparse.ArgumentParser:
    """Options every client command takes, before or after its subcommand. Only the top level
    holds defaults (None: resolved later); below it SUPPRESS keeps an option given earlier."""
    default: Any = None if top_level else argparse.SUPPRESS
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("client options")
    g.add_argument("--address", default=default,
                   help=f"agent query address host:port (default: ${ENV_QUERY_ADDRESS}, "
                        f"else {DEFAULT_QUERY_ADDRESS})")
    g.add_argument("--output", "-o", choices=OUTPUTS, default=default,
                   help="json (the Kafka record's shape) or table (default: json)")
    g.add_argument("--timeout", type=float, default=default,
                   help="seconds to wait for each answer (default: 10)")
    g.add_argument("--token", default=default,
                   help=f"bearer token (default: ${ENV_TOKEN}, then --token-file)")
    g.add_argument("--token-file", type=Path, default=default,
                   help=f"file holding the bearer token (default: ${ENV_TOKEN_FILE}, else the "
                        "local agent's admin.token in --data-dir)")
    g.add_argument("--data-dir", type=Path, default=default, dest="client_data_dir",
                   help=f"a local agent's data dir, to read its admin.token (default: "
                        f"${ENV_DATA_DIR}, else {AgentConfig().data_dir})")
    g.add_argument("--tls-ca", type=Path, default=default,
                   help="use TLS and verify the agent against this CA (PEM)")
    g.add_argument("--tls-cert", type=Path, default=default, dest="client_tls_cert",
                   help="client certificate for mutual TLS (PEM)")
    g.add_argument("--tls-key", type=Path, default=default, dest="client_tls_key",
                   help="client key for mutual TLS (PEM)")
    g.add_argument("--tls-server-name", default=default,
                   help="name the agent's certificate carries, if not the address' host")
    return p


def _env(var: str) -> str:
    return f"env {var}"


def _agent_parser(sub: Any) -> None:
    d = AgentConfig()
    a = sub.add_parser(
        "agent", help="run the sidecar agent",
        description="Run the sidecar agent. A flag wins over its environment variable, which wins "
                    "over the default.")
    # default=None everywhere so an unset flag leaves the env var (AgentConfig.from_env) in
    # charge; the help shows the effective default instead.
    a.add_argument("--ingest-socket", type=Path, metavar="PATH",
                   help=f"Unix socket the hooks send to ({_env(ENV_INGEST_SOCKET)}; "
                        f"default {d.ingest_socket})")
    a.add_argument("--query-address", metavar="HOST:PORT",
                   help=f"query/control gRPC API ({_env(ENV_QUERY_ADDRESS)}; "
                        f"default {d.query_address})")
    a.add_argument("--http-address", metavar="HOST:PORT",
                   help=f"/metrics /healthz /readyz ({_env(ENV_HTTP_ADDRESS)}; "
                        f"default {d.http_address})")
    a.add_argument("--data-dir", type=Path, metavar="DIR",
                   help=f"WAL directory, writable by the agent ({_env(ENV_DATA_DIR)}; "
                        f"default {d.data_dir})")
    a.add_argument("--wal-fsync", choices=WAL_FSYNC_POLICIES,
                   help=f"when the WAL reaches the disk ({_env(ENV_WAL_FSYNC)}; "
                        f"default {d.wal_fsync})")
    a.add_argument("--wal-max-bytes", type=int, metavar="BYTES",
                   help="cap on the WAL (what is not yet delivered); past it batches are refused "
                        f"({_env(ENV_WAL_MAX_BYTES)}; default {d.wal_max_bytes})")
    a.add_argument("--wal-segment-bytes", type=int, metavar="BYTES",
                   help=f"WAL segment size, the unit of reclaim ({_env(ENV_WAL_SEGMENT_BYTES)}; "
                        "default 0: derived from the cap)")
    a.add_argument("--kafka-bootstrap", metavar="HOST:PORT[,...]",
                   help=f"Kafka brokers ({_env(ENV_KAFKA_BOOTSTRAP)}; default none: the WAL "
                        "is the archive)")
    a.add_argument("--kafka-topic-prefix", metavar="PREFIX",
                   help=f"topics are PREFIX.requests etc. ({_env(ENV_KAFKA_TOPIC_PREFIX)}; "
                        f"default {d.kafka_topic_prefix})")
    a.add_argument("--audit-level", choices=list(LEVELS),
                   help=f"level pushed to every hook ({_env(ENV_AUDIT_LEVEL)}; default summary)")
    a.add_argument("--linger-seconds", type=float, metavar="S",
                   help="how long a finished trail waits for late events "
                        f"({_env(ENV_LINGER_SECONDS)}; default {d.linger_seconds})")
    a.add_argument("--max-trails", type=int, metavar="N",
                   help=f"trails kept in memory ({_env(ENV_MAX_TRAILS)}; default {d.max_trails})")
    a.add_argument("--max-trail-events", type=int, metavar="N",
                   help=f"events kept per trail ({_env(ENV_MAX_TRAIL_EVENTS)}; "
                        f"default {d.max_trail_events})")
    a.add_argument("--max-trail-bytes", type=int, metavar="BYTES",
                   help="memory cap of the trail store; oldest evicted first, counted "
                        f"({_env(ENV_MAX_TRAIL_BYTES)}; default {d.max_trail_bytes})")
    a.add_argument("--ready-requires", metavar="LIST",
                   help="comma-separated conditions /readyz requires: "
                        f"{', '.join(READY_CONDITIONS)} ({_env(ENV_READY_REQUIRES)}; "
                        f"default {','.join(d.ready_requires)})")
    a.add_argument("--gpu", choices=GPU_READERS,
                   help=f"GPU telemetry reader ({_env(ENV_GPU)}; default {d.gpu})")
    a.add_argument("--gpu-scope", choices=GPU_SCOPES,
                   help="node: every GPU NVML sees; pod: only the GPUs the connected vLLM "
                        f"processes report ({_env(ENV_GPU_SCOPE)}; default {d.gpu_scope})")
    # -- security (agent/vllm_audit_agent/auth.py) --
    a.add_argument("--auth-tokens-file", type=Path, metavar="FILE",
                   help="YAML/JSON list of {sha256, subject, role, tenant} "
                        f"({_env(ENV_AUTH_TOKENS_FILE)}; default none: the agent makes "
                        "<data-dir>/admin.token at first start)")
    a.add_argument("--tls-cert", type=Path, metavar="PEM",
                   help=f"certificate of the query listener ({_env(ENV_TLS_CERT)}; default none)")
    a.add_argument("--tls-key", type=Path, metavar="PEM",
                   help=f"private key of the query listener ({_env(ENV_TLS_KEY)}; default none)")
    a.add_argument("--tls-client-ca", type=Path, metavar="PEM",
                   help="mutual TLS: the CA client certificates must come from "
                        f"({_env(ENV_TLS_CLIENT_CA)}; default none)")
    a.add_argument("--http-tls", action="store_true", default=None,
                   help="serve the HTTP port (probes, /metrics, management API) over TLS with "
                        "--tls-cert/--tls-key (and --tls-client-ca) "
                        f"({_env(ENV_HTTP_TLS)}; default plaintext)")
    a.add_argument("--allow-insecure-remote", action="store_true", default=None,
                   help="allow a plaintext query listener beyond loopback "
                        f"({_env(ENV_ALLOW_INSECURE_REMOTE)}; default false)")
    a.add_argument("--ingest-socket-group", metavar="GROUP",
                   help="group of the ingest socket, which is mode 0660 "
                        f"({_env(ENV_INGEST_SOCKET_GROUP)}; default the agent's)")
    a.add_argument("--metrics-token-file", type=Path, metavar="FILE",
                   help="/metrics needs the bearer token in this file "
                        f"({_env(ENV_METRICS_TOKEN_FILE)}; default none: open)")
    a.add_argument("--level-apply-deadline", type=float, metavar="S",
                   help="seconds a connected hook has to apply a new level before it counts as "
                        f"a mismatch ({_env(ENV_LEVEL_APPLY_DEADLINE)}; "
                        f"default {d.level_apply_deadline_seconds})")
    a.add_argument("--shutdown-timeout", type=float, metavar="S",
                   help="deadline for flushing on SIGTERM; keep it below the orchestrator's "
                        f"grace period ({_env(ENV_SHUTDOWN_TIMEOUT)}; "
                        f"default {d.shutdown_timeout_seconds})")
    a.add_argument("--max-batch-bytes", type=int, metavar="BYTES",
                   help="per-batch byte cap; a larger batch is refused as too_big and the hook "
                        f"drops it, counted ({_env(ENV_MAX_BATCH_BYTES)}; "
                        f"default {d.max_batch_bytes})")
    a.add_argument("--max-message-bytes", type=int, metavar="BYTES",
                   help="gRPC max receive message size of the ingest socket, at least "
                        f"--max-batch-bytes ({_env(ENV_MAX_MESSAGE_BYTES)}; "
                        f"default {d.max_message_bytes})")
    # -- the record log (agent/vllm_audit_agent/recordlog.py) --
    a.add_argument("--signing-key-file", type=Path, metavar="FILE",
                   help="Ed25519 key signing the record log's checkpoints, PEM or raw 32 bytes "
                        "(VLLM_AUDIT_SIGNING_KEY_FILE; default: generated 0600 in the data dir "
                        "at the first start, public key beside it)")
    a.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="records between signed checkpoints (VLLM_AUDIT_CHECKPOINT_EVERY; "
                        f"default {d.checkpoint_every})")
    a.add_argument("--checkpoint-interval", type=float, metavar="S",
                   help="seconds between signed checkpoints while records arrive "
                        "(VLLM_AUDIT_CHECKPOINT_INTERVAL_SECONDS; "
                        f"default {d.checkpoint_interval_seconds:g})")
    a.add_argument("--record-retention-days", type=float, metavar="DAYS",
                   help="the record log keeps records this long, and within its size cap "
                        f"(VLLM_AUDIT_RECORD_RETENTION_DAYS; default {d.record_retention_days:g})")
    a.add_argument("--record-log-max-bytes", type=int, metavar="BYTES",
                   help="cap on the record log (VLLM_AUDIT_RECORD_LOG_MAX_BYTES; "
                        f"default {d.record_log_max_bytes})")
    a.add_argument("--engine-stats-interval", type=float, metavar="S",
                   help="seconds between published engine-stats snapshots per engine "
                        "(VLLM_AUDIT_ENGINE_STATS_INTERVAL_SECONDS; "
                        f"default {d.engine_stats_interval_seconds:g})")
    a.add_argument("--record-grammar-max-bytes", type=int, metavar="BYTES",
                   help="a record carries its trail's grammar and steps (levels full and up, "
                        "so `replay` works from Kafka or an export) up to this size; 0 = never "
                        f"(VLLM_AUDIT_RECORD_GRAMMAR_MAX_BYTES; default {d.record_grammar_max_bytes})")
    a.add_argument("--stats-history-bytes", type=int, metavar="BYTES",
                   help="engine-stats time series kept on disk for `stats export`; 0 = none "
                        f"(VLLM_AUDIT_STATS_HISTORY_BYTES; default {d.stats_history_bytes})")


def _parser() -> argparse.ArgumentParser:
    client = _client_options(top_level=False)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, parents=[_client_options(True)],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _agent_parser(sub)

    s = sub.add_parser("query", parents=[client], help="read the agent's trails, stats, health")
    qs = s.add_subparsers(dest="what", required=True, metavar="WHAT")
    qs.add_parser("health", parents=[client], help="the agent's health")
    qs.add_parser("stats", parents=[client], help="ingest, drops by reason, WAL, publishing")
    ls = qs.add_parser("list", parents=[client], help="trails, filtered and paginated")
    ls.add_argument("--model", default="", help="only this model")
    ls.add_argument("--user", default="", help="only this user")
    ls.add_argument("--client-request-id", default="",
                    help="only requests the client sent with this X-Request-Id")
    ls.add_argument("--state", choices=list(STATES), help="only trails in this state")
    ls.add_argument("--tenant", default="", help="only this tenant")
    ls.add_argument("--backend", default="",
                    help="only trails whose grammar this structured-output backend compiled")
    ls.add_argument("--limit", type=int, default=50, help="at most N trails (default: 50)")
    g = qs.add_parser("get", parents=[client], help="one trail")
    g.add_argument("request_id")
    g.add_argument("--events", action="store_true",
                   help="include the trail's events (read page by page)")

    s = sub.add_parser("set-level", parents=[client], help="switch the audit level of every hook")
    s.add_argument("level", choices=list(LEVELS))

    s = sub.add_parser("delete", parents=[client],
                       help="delete one final trail from the agent's query store (admin; the "
                            "record log keeps its records)")
    s.add_argument("request_id")
    s = sub.add_parser("clear", parents=[client],
                       help="delete every final trail from the agent's query store (admin; the "
                            "record log keeps their records)")
    s.add_argument("--confirm", action="store_true", required=True,
                   help="required: says you mean it")

    s = sub.add_parser("tail", parents=[client],
                       help="the stored final trails, then each new one as it becomes final")
    s.add_argument("--count", type=int, default=0, help="stop after N trails (default 0: never)")

    s = sub.add_parser("replay", parents=[client],
                       help="prove a trail's tokens against its recorded grammar (needs vLLM)")
    s.add_argument("trail", help="a trail file (`query get ID --events`), a record or export "
                                 "file, or a trail id (read from the agent, or from Kafka)")
    s.add_argument("--trail-id", help="which trail of an export file (default: its only one)")
    s.add_argument("--kafka-bootstrap",
                   help="read the trail id's newest record from <prefix>.requests in Kafka")
    s.add_argument("--topic-prefix", default="vllm-audit")
    s.add_argument("--model", required=True, help="the model directory (its tokenizer)")
    v = sub.add_parser("verify", help="check a record chain: log directory, export file or Kafka")
    v.add_argument("path", nargs="?", type=Path,
                   help="record log directory (<data_dir>/records) or JSONL export file")
    v.add_argument("--kafka-bootstrap", help="read the chain from Kafka instead")
    v.add_argument("--topic", action="append",
                   help="Kafka topic (repeatable); default every topic of the chain: <prefix>."
                        "requests, .checkpoints and .access")
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
    e.add_argument("--output-file", type=Path, help="file to write (default: stdout)")
    st = sub.add_parser("stats", help="the engine-stats time series")
    sts = st.add_subparsers(dest="what", required=True, metavar="WHAT")
    se = sts.add_parser("export", help="engine-stats snapshots in a time range as CSV or JSONL, "
                                       "from the agent's disk or the Kafka stream")
    se.add_argument("--data-dir", type=Path,
                    help="the agent's data dir, its engine-stats/ history (default: env or config)")
    se.add_argument("--kafka-bootstrap", help="read <prefix>.engine-stats from Kafka instead")
    se.add_argument("--topic-prefix", default="vllm-audit")
    se.add_argument("--since", help="ISO 8601 or unix time (snapshot time, inclusive)")
    se.add_argument("--until", help="ISO 8601 or unix time (snapshot time, exclusive)")
    se.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    se.add_argument("--output-file", type=Path, help="file to write (default: stdout)")
    return p


# --- output -----------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):  # as protobuf's JSON mapping does
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value: Any, indent: bool = True) -> str:
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(value, option=option | orjson.OPT_NON_STR_KEYS, default=_jsonable).decode()


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        if not value and prefix:
            yield prefix, ""
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for i, item in enumerate(value):
            yield from _flatten(item, f"{prefix}[{i}]")
    elif isinstance(value, list):
        yield prefix, ",".join(str(v) for v in value)
    elif isinstance(value, bytes):
        yield prefix, _jsonable(value)
    else:
        yield prefix, str(value)


def _table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    every = [list(header)] if header else []
    every += [list(r) for r in rows]
    if not every:
        return ""
    widths = [max(len(r[i]) for r in every) for i in range(len(every[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in every)


def _trail_rows(trails: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [[str(t.get(c, "")) for c in TRAIL_COLUMNS] for t in trails]


def _emit(value: dict[str, Any], output: str) -> None:
    if output == "json":
        text = _dumps(value)
    elif isinstance(value.get("trails"), list):
        text = _table(_trail_rows(value["trails"]), TRAIL_COLUMNS)
        if value.get("next_page_token"):
            text += f"\n(more: next page token {value['next_page_token']})"
    else:
        text = _table(list(_flatten(value)), ("FIELD", "VALUE"))
    sys.stdout.write(text + "\n")


def _as_dict(message: Message) -> dict[str, Any]:
    # A trail is shown as its Kafka record, wherever it appears.
    if isinstance(message, q.ListTrailsResponse):
        return {"trails": [trail_record(t) for t in message.trails],
                "next_page_token": message.next_page_token}
    if isinstance(message, q.GetTrailResponse):
        return {"summary": trail_record(message.summary),
                "events": [message_to_dict(e) for e in message.events]}
    return message_to_dict(message)


# --- commands ---------------------------------------------------------------------------------

def _run_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = AgentConfig.from_env(
        ingest_socket=args.ingest_socket, query_address=args.query_address,
        http_address=args.http_address, data_dir=args.data_dir, wal_fsync=args.wal_fsync,
        wal_max_bytes=args.wal_max_bytes, wal_segment_bytes=args.wal_segment_bytes,
        kafka_bootstrap=args.kafka_bootstrap, kafka_topic_prefix=args.kafka_topic_prefix,
        audit_level=parse_level(args.audit_level) if args.audit_level else None,
        linger_seconds=args.linger_seconds, max_trails=args.max_trails,
        max_trail_events=args.max_trail_events, max_trail_bytes=args.max_trail_bytes,
        gpu=args.gpu, gpu_scope=args.gpu_scope,
        ready_requires=(parse_required(args.ready_requires)
                        if args.ready_requires is not None else None),
        shutdown_timeout_seconds=args.shutdown_timeout,
        auth_tokens_file=args.auth_tokens_file, tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca, allow_insecure_remote=args.allow_insecure_remote,
        http_tls=args.http_tls,
        ingest_socket_group=args.ingest_socket_group, metrics_token_file=args.metrics_token_file,
        level_apply_deadline_seconds=args.level_apply_deadline,
        max_batch_bytes=args.max_batch_bytes, max_message_bytes=args.max_message_bytes,
        signing_key_file=args.signing_key_file, checkpoint_every=args.checkpoint_every,
        checkpoint_interval_seconds=args.checkpoint_interval,
        record_retention_days=args.record_retention_days,
        record_log_max_bytes=args.record_log_max_bytes,
        stats_history_bytes=args.stats_history_bytes,
        engine_stats_interval_seconds=args.engine_stats_interval,
        record_grammar_max_bytes=args.record_grammar_max_bytes,
    )
    for field, address in (("--query-address", config.query_address),
                           ("--http-address", config.http_address)):
        _check_bindable(field, address)
    from vllm_audit_agent.server import serve

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # A future, not Event.wait(): a coroutine never awaited (start-up failed) warns on exit.
        stop: asyncio.Future[None] = loop.create_future()

        def request_stop() -> None:
            if not stop.done():
                stop.set_result(None)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, request_stop)
        await serve(config, stop)

    try:
        asyncio.run(main())
    except OSError as exc:  # a port in use, a data dir it may not write
        raise AgentStartError(f"agent cannot start: {exc}") from exc
    except DataDirLocked as exc:  # another agent has this data directory
        raise AgentStartError(f"agent cannot start: {exc}") from None
    except RuntimeError as exc:
        # grpc reports a bind failure as a bare RuntimeError("Failed to bind to address ...").
        if "bind" not in str(exc):
            raise
        raise AgentStartError(f"agent cannot start: {str(exc).split(';')[0]} (address in use?)") \
            from exc
    return 0


class AgentStartError(Exception):
    """The agent could not start; the message is the whole story (one line, no traceback)."""


def _check_bindable(field: str, address: str) -> None:
    """Fail before start-up with the OS's reason: gRPC only says "Failed to bind" (after a
    core log line), and a half-started agent is worse than none."""
    host, port = parse_address(field, address)
    if port == 0:
        return
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as both servers do
            probe.bind(sockaddr)
    except OSError as exc:
        raise AgentStartError(f"agent cannot listen on {field}={address}: "
                              f"{exc.strerror or exc}") from None


def _run_client(args: argparse.Namespace) -> int:
    address = args.address or os.environ.get(ENV_QUERY_ADDRESS) or DEFAULT_QUERY_ADDRESS
    output = args.output or "json"
    timeout = 10.0 if args.timeout is None else args.timeout
    args.resolved_address = address
    with _client_channel(args, address) as chan:
        query = query_pb2_grpc.QueryServiceStub(chan)
        answer: Message
        if args.command == "set-level":
            control = query_pb2_grpc.ControlServiceStub(chan)
            answer = control.SetAuditLevel(
                q.SetAuditLevelRequest(level=parse_level(args.level)),  # type: ignore[arg-type]
                timeout=timeout)
        elif args.command == "delete":
            answer = query_pb2_grpc.ControlServiceStub(chan).DeleteTrail(
                q.DeleteTrailRequest(request_id=args.request_id), timeout=timeout)
        elif args.command == "clear":
            answer = query_pb2_grpc.ControlServiceStub(chan).ClearTrails(
                q.ClearTrailsRequest(confirm=CLEAR_CONFIRMATION), timeout=timeout)
        elif args.command == "tail":
            return _tail(query, args.count, output)
        elif args.what == "health":
            answer = query.Health(q.HealthRequest(), timeout=timeout)
        elif args.what == "stats":
            answer = query.GetStats(q.StatsRequest(), timeout=timeout)
        elif args.what == "list":
            request = q.ListTrailsRequest(model=args.model, user=args.user, page_size=args.limit,
                                          client_request_id=args.client_request_id,
                                          tenant=args.tenant, grammar_backend=args.backend,
                                          state=STATES[args.state] if args.state else 0)  # type: ignore[arg-type]
            answer = query.ListTrails(request, timeout=timeout)
        else:
            answer = _get_trail(query, args.request_id, args.events, timeout)
        _emit(_as_dict(answer), output)
    return 0


def _client_channel(args: argparse.Namespace, address: str) -> grpc.Channel:
    data_dir = args.client_data_dir or Path(os.environ.get(ENV_DATA_DIR) or AgentConfig().data_dir)
    token = resolve_client_token(args.token, args.token_file, data_dir, os.environ)
    tls = None
    if args.tls_ca or args.client_tls_cert:
        tls = ClientTls(args.tls_ca, args.client_tls_cert, args.client_tls_key,
                        args.tls_server_name)
    return channel(address, token, tls)


def _get_trail(query: query_pb2_grpc.QueryServiceStub, request_id: str, events: bool,
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


#: Watch events that carry a new record (tail shows records, not removals from the store).
RECORD_KINDS = (q.WATCH_EVENT_KIND_FINAL, q.WATCH_EVENT_KIND_REVISED)


def _tail(query: query_pb2_grpc.QueryServiceStub, count: int, output: str) -> int:
    """One final trail per line (its Kafka record, or a table row): the stored ones first,
    then each as it becomes final, from one server stream (no re-listing)."""
    if output == "table":
        sys.stdout.write(_table([], TRAIL_COLUMNS) + "\n")
    stream = query.WatchTrails(q.WatchTrailsRequest(replay=True))
    records = (item for item in stream if item.kind in RECORD_KINDS)  # not evictions/deletes
    for shown, item in enumerate(records, 1):
        record = trail_record(item.trail)
        line = (_dumps(record, indent=False) if output == "json"
                else "  ".join(_trail_rows([record])[0]))
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if count and shown >= count:
            stream.cancel()
            return 0
    return 0


def _run_replay(args: argparse.Namespace) -> int:
    """Exit 0: proven; 1: a step does not match (named); 2: the trail cannot be replayed."""
    from vllm_audit_agent.records.replay import run

    address = args.address or os.environ.get(ENV_QUERY_ADDRESS) or DEFAULT_QUERY_ADDRESS
    timeout = 10.0 if args.timeout is None else args.timeout
    args.resolved_address = address

    def fetch(request_id: str) -> q.GetTrailResponse:
        with _client_channel(args, address) as chan:
            return _get_trail(query_pb2_grpc.QueryServiceStub(chan), request_id, True, timeout)

    fetch_records = None
    if args.kafka_bootstrap:
        from vllm_audit_agent.records.verify import kafka_payloads

        def fetch_records(trail_id: str) -> list[dict[str, Any]]:
            topic = f"{args.topic_prefix}.requests"
            payloads = asyncio.run(kafka_payloads(args.kafka_bootstrap, [topic]))
            return [r for r in map(orjson.loads, payloads) if r.get("trail_id") == trail_id]

    code, result = run(args.trail, args.model, fetch, args.trail_id, fetch_records)
    _emit(result, args.output or "json")
    return code


def _rpc_error(exc: grpc.RpcError, address: str) -> str:
    code = exc.code()  # type: ignore[attr-defined]
    details = exc.details()  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"UNAVAILABLE: no agent answers at {address} ({details})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"DEADLINE_EXCEEDED: the agent at {address} did not answer in time"
    return f"{code.name}: {details}"


def _run_verify(args: argparse.Namespace) -> int:
    from vllm_audit_agent.records.chain import load_public_key
    from vllm_audit_agent.records.verify import (
        Report,
        kafka_payloads,
        order_by_seq,
        path_payloads,
        verify_chain,
    )

    if (args.path is None) == (args.kafka_bootstrap is None):
        raise ValueError("verify needs exactly one of PATH or --kafka-bootstrap")
    key = load_public_key(args.public_key)
    if args.path is not None:
        report = verify_chain(path_payloads(args.path), key, args.allow_unsigned_tail)
    else:
        topics = args.topic or [f"{args.topic_prefix}.{topic}" for topic in TOPICS.values()]
        payloads = asyncio.run(kafka_payloads(args.kafka_bootstrap, topics))
        pre = Report()
        ordered = order_by_seq(payloads, pre)
        report = verify_chain(ordered, key, args.allow_unsigned_tail)
        report.duplicates_collapsed = pre.duplicates_collapsed
        if pre.broken is not None and (report.broken is None
                                       or pre.broken.seq <= report.broken.seq):
            report.broken = pre.broken
    sys.stdout.write(_dumps(report.to_dict()) + "\n")
    if report.broken is not None:
        b = report.broken
        print(f"{PROG} verify: BROKEN at seq {b.seq}: {b.reason} ({b.detail})", file=sys.stderr)
        return 1
    print(f"{PROG} verify: intact: {report.records} records, seq {report.first_seq}.."
          f"{report.last_seq}, {report.checkpoints} checkpoints", file=sys.stderr)
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from vllm_audit_agent.records.export import export, parse_time

    data_dir = args.data_dir or AgentConfig.from_env().data_dir
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    records_dir = data_dir / "records"
    if not records_dir.is_dir():
        raise ValueError(f"{records_dir}: no record log there")
    if args.output_file is None:
        n = export(records_dir, sys.stdout, since, until, args.format)
    else:
        with open(args.output_file, "w", newline="") as out:
            n = export(records_dir, out, since, until, args.format)
    print(f"{PROG} export: {n} request records", file=sys.stderr)
    return 0


def _run_stats_export(args: argparse.Namespace) -> int:
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "agent":
            if args.address or args.output or args.timeout is not None:
                raise ValueError("--address/--output/--timeout are client options; the agent "
                                 "listens on --query-address")
            return _run_agent(args)
        if args.command == "replay":
            return _run_replay(args)
        if args.command == "verify":
            return _run_verify(args)
        if args.command == "export":
            return _run_export(args)
        if args.command == "stats":
            return _run_stats_export(args)
        return _run_client(args)
    except (ValueError, AgentStartError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    except grpc.RpcError as exc:
        print(f"{PROG}: {_rpc_error(exc, args.resolved_address)}", file=sys.stderr)
        return 1
    except OSError as exc:  # a missing or unreadable file: one line, not a traceback
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
