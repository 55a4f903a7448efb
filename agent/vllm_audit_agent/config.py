"""The agent's one typed configuration object, built at the edge (CLI flags over env vars).

Every `vllm-audit agent` option is declared once, on its AgentConfig field (options.declare):
flag, environment variable, default, help and check. The CLI's flags, reading the
environment and the README's table of options are derived from these declarations;
`python -m vllm_audit_agent.config` prints that table (tests/test_options.py checks the
README against it).
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_audit.v1 import events_pb2
from vllm_audit_agent.options import (
    Option,
    declare,
    markdown_table,
    not_negative,
    options_of,
    positive,
    read_env,
)

#: The conditions /readyz can require (api/readiness.py evaluates them; its docstring says
#: what each means); wal_writable by default.
CONDITIONS = ("wal_writable", "wal_not_full", "kafka_connected")
DEFAULT_REQUIRED: tuple[str, ...] = ("wal_writable",)


def parse_required(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise ValueError(f"ready_requires: unknown condition(s) {', '.join(unknown)}; "
                         f"expected any of {', '.join(CONDITIONS)}")
    return names


WAL_FSYNC_POLICIES = ("always", "batch", "never")
GPU_READERS = ("nvml", "none", "fake")
GPU_SCOPES = ("node", "pod")
#: Derived from the contract's AuditLevel (one definition), in wire order: off, summary, full,
#: full-with-allowed-sets, key-events (which captures between summary and full; its wire
#: number is newer, see events.proto).
LEVELS = {name[len("AUDIT_LEVEL_"):].lower().replace("_", "-"): number
          for name, number in events_pb2.AuditLevel.items()
          if number != events_pb2.AUDIT_LEVEL_UNSPECIFIED}


def parse_level(text: str) -> int:
    key = text.strip().lower().replace("_", "-")
    if key not in LEVELS:
        raise ValueError(f"audit level {text!r} is not one of {', '.join(LEVELS)}")
    return int(LEVELS[key])


def parse_address(field: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{field}={text!r} is not host:port")
    return host, int(port)


def parse_witnesses(text: str) -> tuple[str, ...]:
    """Comma-separated witness base URLs (http or https, no query): POST <url>/add-checkpoint."""
    urls = tuple(u.strip().rstrip("/") for u in text.split(",") if u.strip())
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query \
                or parts.fragment:
            raise ValueError(f"witness {url!r} is not an http(s)://host[:port][/prefix] URL")
    if len(set(urls)) != len(urls):
        raise ValueError(f"a witness is given twice: {', '.join(urls)}")
    return urls


#: Topic suffixes a SIEM copy can be made for, and the formats (json: the chained record
#: alone, which every topic carries anyway).
KAFKA_FORMAT_TOPICS = ("requests", "findings", "access", "checkpoints")
KAFKA_FORMATS = ("json", "ocsf", "ecs", "hec")


def parse_kafka_formats(text: str) -> tuple[str, ...]:
    """`TOPIC=FORMAT[+FORMAT]`, comma-separated, as sorted `topic=format` pairs (json dropped:
    the chained record is on its topic whatever the option says)."""
    pairs: set[str] = set()
    for item in (i.strip() for i in text.split(",") if i.strip()):
        topic, sep, formats = item.partition("=")
        topic = topic.strip()
        if not sep or topic not in KAFKA_FORMAT_TOPICS:
            raise ValueError(f"kafka format {item!r} is not TOPIC=FORMAT with TOPIC one of "
                             f"{', '.join(KAFKA_FORMAT_TOPICS)}")
        for fmt in (f.strip() for f in formats.split("+")):
            if fmt not in KAFKA_FORMATS:
                raise ValueError(f"kafka format {fmt!r} (of {item!r}) is not one of "
                                 f"{', '.join(KAFKA_FORMATS)}")
            if fmt != "json":
                pairs.add(f"{topic}={fmt}")
    return tuple(sorted(pairs))


def kafka_copies(pairs: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """{topic suffix: the formats of its copies} from `parse_kafka_formats`' pairs."""
    copies: dict[str, tuple[str, ...]] = {}
    for pair in pairs:
        topic, _, fmt = pair.partition("=")
        copies[topic] = (*copies.get(topic, ()), fmt)
    return copies


def _kafka_formats(field: str, value: Any) -> None:
    parse_kafka_formats(",".join(value))


def _otlp_endpoint(field: str, value: Any) -> None:
    if value is None:
        return
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"{field}={value!r} is not an OTLP gRPC endpoint http(s)://HOST:PORT")


def _witnesses(field: str, value: Any) -> None:
    parse_witnesses(",".join(value))


def _none_if_empty(value: Any) -> str:
    return ",".join(value) or "none"


def _address(field: str, value: Any) -> None:
    parse_address(field, value)


def _known_level(field: str, value: Any) -> None:
    if value not in LEVELS.values():
        raise ValueError(f"{field}={value!r} is not a known level")


def _level_name(number: Any) -> str:
    return next(name for name, n in LEVELS.items() if n == number)


def _conditions(field: str, value: Any) -> None:
    parse_required(",".join(value))


def _archive_url(field: str, value: Any) -> None:
    """s3://BUCKET[/PREFIX] (archive/layout.py reads it; checked here, where options are)."""
    if value is None:
        return
    parts = urllib.parse.urlsplit(value)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{field}={value!r} is not an s3://BUCKET[/PREFIX] URL")


@dataclass(frozen=True)
class AgentConfig:
    # -- where it listens and keeps its files --
    ingest_socket: Path = declare(
        "--ingest-socket", "VLLM_AUDIT_INGEST_SOCKET", Path("/var/run/vllm-audit/ingest.sock"),
        "Unix socket the hooks send to", metavar="PATH")
    query_address: str = declare(
        "--query-address", "VLLM_AUDIT_QUERY_ADDRESS", "127.0.0.1:50051",
        "the query/control gRPC API", metavar="HOST:PORT", check=_address)
    http_address: str = declare(
        "--http-address", "VLLM_AUDIT_HTTP_ADDRESS", "127.0.0.1:9400",
        "the HTTP port: /metrics, /healthz, /readyz and the JSON management API",
        metavar="HOST:PORT", check=_address)
    data_dir: Path = declare(
        "--data-dir", "VLLM_AUDIT_DATA_DIR", Path("/var/lib/vllm-audit"),
        "the agent's directory (WAL, record log, engine-stats history), writable by it",
        metavar="DIR")
    # -- the WAL: what is owed downstream --
    wal_fsync: str = declare(
        "--wal-fsync", "VLLM_AUDIT_WAL_FSYNC", "batch", "when the WAL reaches the disk",
        choices=WAL_FSYNC_POLICIES)
    wal_max_bytes: int = declare(
        "--wal-max-bytes", "VLLM_AUDIT_WAL_MAX_BYTES", 1 << 30,
        "cap on the WAL (what is not yet delivered); past it batches are refused",
        metavar="BYTES", check=positive)
    wal_segment_bytes: int = declare(
        "--wal-segment-bytes", "VLLM_AUDIT_WAL_SEGMENT_BYTES", 0,
        "WAL segment size, the unit of reclaim", metavar="BYTES", check=not_negative,
        default_note="derived from the cap")
    # -- the trail store (memory) --
    max_trails: int = declare(
        "--max-trails", "VLLM_AUDIT_MAX_TRAILS", 100_000, "trails kept in memory",
        metavar="N", check=positive)
    max_trail_events: int = declare(
        "--max-trail-events", "VLLM_AUDIT_MAX_TRAIL_EVENTS", 10_000, "events kept per trail",
        metavar="N", check=positive)
    #: The chart gives the agent 1 GiB; trails get a quarter of it by default.
    max_trail_bytes: int = declare(
        "--max-trail-bytes", "VLLM_AUDIT_MAX_TRAIL_BYTES", 256 << 20,
        "memory cap of the trail store; oldest evicted first, counted", metavar="BYTES",
        check=positive)
    linger_seconds: float = declare(
        "--linger-seconds", "VLLM_AUDIT_LINGER_SECONDS", 30.0,
        "how long a finished trail waits for late events", metavar="S", check=positive)
    # -- the hooks --
    audit_level: int = declare(
        "--audit-level", "VLLM_AUDIT_LEVEL", events_pb2.AUDIT_LEVEL_SUMMARY,
        "level pushed to every hook", choices=tuple(LEVELS), parse=parse_level,
        check=_known_level, show=_level_name)
    level_apply_deadline_seconds: float = declare(
        "--level-apply-deadline", "VLLM_AUDIT_LEVEL_APPLY_DEADLINE_SECONDS", 10.0,
        "seconds a connected hook has to apply a new level before it counts as a mismatch",
        metavar="S", check=positive)
    #: A batch over this many bytes is refused as too_big (permanent: the hook drops it).
    max_batch_bytes: int = declare(
        "--max-batch-bytes", "VLLM_AUDIT_MAX_BATCH_BYTES", 2 << 20,
        "per-batch byte cap; a larger batch is refused as too_big and the hook drops it, counted",
        metavar="BYTES", check=positive)
    #: At least max_batch_bytes, so an oversize batch is answered with a refusal rather than
    #: a transport error (checked in __post_init__).
    max_message_bytes: int = declare(
        "--max-message-bytes", "VLLM_AUDIT_MAX_MESSAGE_BYTES", 8 << 20,
        "gRPC max receive message size of the ingest socket, at least --max-batch-bytes",
        metavar="BYTES")
    # -- Kafka --
    kafka_bootstrap: str | None = declare(
        "--kafka-bootstrap", "VLLM_AUDIT_KAFKA_BOOTSTRAP", None, "Kafka brokers",
        metavar="HOST:PORT[,...]", default_note="the WAL is the archive")
    kafka_topic_prefix: str = declare(
        "--kafka-topic-prefix", "VLLM_AUDIT_KAFKA_TOPIC_PREFIX", "vllm-audit",
        "topics are PREFIX.requests etc.", metavar="PREFIX")
    kafka_formats: tuple[str, ...] = declare(
        "--kafka-format", "VLLM_AUDIT_KAFKA_FORMATS", (),
        "TOPIC=FORMAT[+FORMAT]: beside each record on <prefix>.TOPIC (the chained JSON, always "
        "there: what the fleet verifies), a copy in FORMAT on <prefix>.TOPIC.FORMAT, for a SIEM "
        f"to consume as is; TOPIC one of {', '.join(KAFKA_FORMAT_TOPICS)}, FORMAT one of "
        f"{', '.join(KAFKA_FORMATS)} (ocsf and ecs copy requests and findings; hec every "
        "record) (repeatable or comma-separated)", metavar="TOPIC=FORMAT",
        parse=parse_kafka_formats, check=_kafka_formats, show=_none_if_empty, repeatable=True,
        default_note="the chained JSON only")
    # -- OpenTelemetry: records as spans (siem/otlp.py), optional --
    otlp_endpoint: str | None = declare(
        "--otlp-endpoint", "VLLM_AUDIT_OTLP_ENDPOINT", None,
        "OTLP gRPC endpoint (a Collector) each request record is exported to as a span with "
        "the GenAI semantic conventions, in the caller's trace (its traceparent); best effort: "
        "a bounded queue, drops counted; needs the `otel` extra", metavar="URL",
        check=_otlp_endpoint, default_note="no export")
    # -- GPU telemetry --
    gpu: str = declare("--gpu", "VLLM_AUDIT_GPU", "nvml", "GPU telemetry reader",
                       choices=GPU_READERS)
    #: Seconds between GPU samples; not an option (no flag or variable sets it).
    gpu_interval_seconds: float = 5.0
    #: A sidecar's NVML sees the whole node (NVIDIA_VISIBLE_DEVICES=all, as dcgm-exporter's does).
    gpu_scope: str = declare(
        "--gpu-scope", "VLLM_AUDIT_GPU_SCOPE", "node",
        "node: every GPU NVML sees; pod: only the GPUs the connected vLLM processes report",
        choices=GPU_SCOPES)
    # -- the record log (<data_dir>/records) --
    signing_key_file: Path | None = declare(
        "--signing-key-file", "VLLM_AUDIT_SIGNING_KEY_FILE", None,
        "Ed25519 key signing the record log's checkpoints, PEM or raw 32 bytes; keep it outside "
        "the data dir, read-only (`vllm-audit keygen` makes one; the chart mounts a Secret)",
        metavar="FILE",
        default_note="generated 0600 in the data dir at the first start, public key beside it: "
                     "one machine only, warned at start (vllm_audit_signing_key_in_data_dir 1)")
    checkpoint_every: int = declare(
        "--checkpoint-every", "VLLM_AUDIT_CHECKPOINT_EVERY", 1000,
        "records between signed checkpoints", metavar="N", check=positive)
    checkpoint_interval_seconds: float = declare(
        "--checkpoint-interval", "VLLM_AUDIT_CHECKPOINT_INTERVAL_SECONDS", 10.0,
        "seconds between signed checkpoints while records arrive", metavar="S", check=positive)
    # -- content sealing (records/content.py): crypto-shredding, content retention --
    content_plaintext: bool = declare(
        "--content-plaintext", "VLLM_AUDIT_CONTENT_PLAINTEXT", False,
        "keep the prompt and output a capture policy keeps readable (full, redact) in clear in "
        "the records instead of sealing them under a per-user, per-period key: no erasure, "
        "and content then expires only with its records", default_note="sealed")
    content_key_dir: Path | None = declare(
        "--content-key-dir", "VLLM_AUDIT_CONTENT_KEY_DIR", None,
        "directory of the content keys; in production its own volume, apart from the data dir "
        "and its backups (README: Retention tiers and erasure)", metavar="DIR",
        default_note="<data dir>/content-keys, warned at start: a copy of the data dir then "
                     "holds the keys")
    content_retention_days: float = declare(
        "--content-retention-days", "VLLM_AUDIT_CONTENT_RETENTION_DAYS", 30.0,
        "sealed content is readable this long (its keys are then destroyed, a signed erasure "
        "record says so); the records stay for --record-retention-days; 0 = as long as they",
        metavar="DAYS", check=not_negative)
    content_key_period_seconds: float = declare(
        "--content-key-period", "VLLM_AUDIT_CONTENT_KEY_PERIOD_SECONDS", 86400.0,
        "how long one user's content key serves: the granularity of content expiry",
        metavar="S", check=positive)
    # -- witnesses (delivery/cosigning.py): checkpoints cosigned off the pod --
    witnesses: tuple[str, ...] = declare(
        "--witness", "VLLM_AUDIT_WITNESSES", (),
        "witness base URL (`vllm-audit witness`, C2SP tlog-witness) each durable checkpoint is "
        "offered to; its cosignatures become records of the log (repeatable or comma-separated)",
        metavar="URL", parse=parse_witnesses, check=_witnesses, show=_none_if_empty,
        repeatable=True)
    witness_timeout_seconds: float = declare(
        "--witness-timeout", "VLLM_AUDIT_WITNESS_TIMEOUT_SECONDS", 10.0,
        "seconds an offer to a witness may take before it counts as unreachable (retried with "
        "backoff; records never wait for a witness)", metavar="S", check=positive)
    record_retention_days: float = declare(
        "--record-retention-days", "VLLM_AUDIT_RECORD_RETENTION_DAYS", 180.0,
        "the record log keeps records this long, and within its size cap", metavar="DAYS",
        check=positive)
    record_log_max_bytes: int = declare(
        "--record-log-max-bytes", "VLLM_AUDIT_RECORD_LOG_MAX_BYTES", 4 << 30,
        "cap on the record log", metavar="BYTES", check=positive)
    record_expire_by_size: bool = declare(
        "--record-expire-by-size", "VLLM_AUDIT_RECORD_EXPIRE_BY_SIZE", False,
        "let retention expire request records before their age to keep the record log under "
        "its cap — only records already published and sealed; without it a full log refuses "
        "new records (back-pressure, counted and alerted) and the evidence stays",
        default_note="age only")
    # -- the WORM archive (archive/): sealed segments to S3 under Object Lock --
    archive_url: str | None = declare(
        "--archive-url", "VLLM_AUDIT_ARCHIVE_URL", None,
        "s3://BUCKET/PREFIX (a bucket created with Object Lock): each sealed record-log segment "
        "and the checkpoint covering it is uploaded there locked in compliance mode; retention "
        "never deletes a segment the archive does not hold; credentials from AWS_* variables",
        metavar="URL", check=_archive_url, default_note="no archive")
    archive_endpoint: str | None = declare(
        "--archive-endpoint", "VLLM_AUDIT_ARCHIVE_ENDPOINT", None,
        "the S3 endpoint of an S3-compatible server (SeaweedFS, MinIO, Ceph)", metavar="URL",
        default_note="AWS S3 (or AWS_ENDPOINT_URL)")
    archive_retention_days: float = declare(
        "--archive-retention-days", "VLLM_AUDIT_ARCHIVE_RETENTION_DAYS", 180.0,
        "each archived object is locked (compliance mode: nobody can delete or shorten it) "
        "for this long after its upload; set it from your retention policy", metavar="DAYS",
        check=positive)
    query_rate_per_token: float = declare(
        "--query-rate-per-token", "VLLM_AUDIT_QUERY_RATE_PER_TOKEN", 50.0,
        "query and control calls per second each non-admin token may make (bursts of twice "
        "that); more are refused (429 / RESOURCE_EXHAUSTED) and on record; 0 = no limit",
        metavar="N",
        check=not_negative)
    access_records_max_bytes: int = declare(
        "--access-records-max-bytes", "VLLM_AUDIT_ACCESS_RECORDS_MAX_BYTES", 0,
        "the part of the record log's cap access records (queries, refusals) may hold; they "
        "never make retention expire request records, and queries are refused (429 / "
        "RESOURCE_EXHAUSTED) while it is spent", metavar="BYTES", check=not_negative,
        default_note="a tenth of the record log's cap")
    #: Cap on the grammar events a record carries (model/record.py, grammar_proof).
    record_grammar_max_bytes: int = declare(
        "--record-grammar-max-bytes", "VLLM_AUDIT_RECORD_GRAMMAR_MAX_BYTES", 256 << 10,
        "a record carries its trail's grammar and steps (levels full and up, so `replay` works "
        "from Kafka or an export) up to this size; 0 = never", metavar="BYTES", check=not_negative)
    # -- engine stats (<data_dir>/engine-stats, telemetry/stats_history.py) --
    stats_history_bytes: int = declare(
        "--stats-history-bytes", "VLLM_AUDIT_STATS_HISTORY_BYTES", 64 << 20,
        "engine-stats time series kept on disk for `stats export`; 0 = none", metavar="BYTES",
        check=not_negative)
    engine_stats_interval_seconds: float = declare(
        "--engine-stats-interval", "VLLM_AUDIT_ENGINE_STATS_INTERVAL_SECONDS", 1.0,
        "seconds between published engine-stats snapshots per engine (Kafka and the history)",
        metavar="S", check=positive)
    # -- security of the query/control API and the HTTP port (the api room) --
    auth_tokens_file: Path | None = declare(
        "--auth-tokens-file", "VLLM_AUDIT_AUTH_TOKENS_FILE", None,
        "YAML/JSON list of {sha256, subject, role, tenant}", metavar="FILE",
        default_note="the agent makes admin.token in the data dir at first start")
    tls_cert: Path | None = declare(
        "--tls-cert", "VLLM_AUDIT_TLS_CERT", None, "certificate of the query listener",
        metavar="PEM")
    tls_key: Path | None = declare(
        "--tls-key", "VLLM_AUDIT_TLS_KEY", None, "private key of the query listener",
        metavar="PEM")
    tls_client_ca: Path | None = declare(
        "--tls-client-ca", "VLLM_AUDIT_TLS_CLIENT_CA", None,
        "mutual TLS: the CA client certificates must come from", metavar="PEM")
    http_tls: bool = declare(
        "--http-tls", "VLLM_AUDIT_HTTP_TLS", False,
        "serve the HTTP port (probes, /metrics, management API) over TLS with "
        "--tls-cert/--tls-key (and --tls-client-ca); then it may listen beyond loopback",
        default_note="plaintext")
    allow_insecure_remote: bool = declare(
        "--allow-insecure-remote", "VLLM_AUDIT_ALLOW_INSECURE_REMOTE", False,
        "allow a plaintext query listener beyond loopback")
    ingest_socket_group: str | None = declare(
        "--ingest-socket-group", "VLLM_AUDIT_INGEST_SOCKET_GROUP", None,
        "group of the ingest socket, which is mode 0660", metavar="GROUP",
        default_note="the agent's group")
    metrics_token_file: Path | None = declare(
        "--metrics-token-file", "VLLM_AUDIT_METRICS_TOKEN_FILE", None,
        "/metrics needs the bearer token in this file", metavar="FILE", default_note="open")
    price_table_file: Path | None = declare(
        "--price-table", "VLLM_AUDIT_PRICE_TABLE", None,
        "YAML/JSON prices per model per 1k input/output tokens, for GetAggregates' cost",
        metavar="FILE", default_note="no prices (cost 0; requests counted unpriced)")
    # -- detections (detections/): streaming rules over the records, findings in the log --
    detections: bool = declare(
        "--detections", "VLLM_AUDIT_DETECTIONS", False,
        "run the detection rules over the records this agent writes: each finding is a "
        "`finding` record in the log and on <prefix>.findings", default_note="off")
    detection_rules_file: Path | None = declare(
        "--detection-rules", "VLLM_AUDIT_DETECTION_RULES", None,
        "YAML/JSON/TOML thresholds of the detection rules (README: Detections)",
        metavar="FILE", default_note="the defaults")
    # -- lifecycle --
    ready_requires: tuple[str, ...] = declare(
        "--ready-requires", "VLLM_AUDIT_READY_REQUIRES", DEFAULT_REQUIRED,
        f"comma-separated conditions /readyz requires: {', '.join(CONDITIONS)}", metavar="LIST",
        parse=parse_required, check=_conditions, empty_env_is_value=True)
    #: The whole stop (drain ingest, flush trails, publisher, NVML) fits in this; it must be
    #: shorter than Kubernetes' terminationGracePeriodSeconds (30 s by default), so the agent
    #: reports what it lost itself.
    shutdown_timeout_seconds: float = declare(
        "--shutdown-timeout", "VLLM_AUDIT_SHUTDOWN_TIMEOUT_SECONDS", 20.0,
        "deadline for flushing on SIGTERM; keep it below the orchestrator's grace period",
        metavar="S", check=positive)

    def __post_init__(self) -> None:
        for option in OPTIONS:
            option.validate(getattr(self, option.field))
        # What no single option can check on its own.
        if not self.max_batch_bytes <= self.max_message_bytes < 1 << 31:  # gRPC takes an int32
            raise ValueError(f"max_message_bytes={self.max_message_bytes!r} must be >= "
                             f"max_batch_bytes={self.max_batch_bytes!r} and < 2 GiB")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.http_tls and (self.tls_cert is None or self.tls_key is None):
            raise ValueError("http_tls (the HTTP port over TLS) needs tls_cert and tls_key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.access_records_max_bytes >= self.record_log_max_bytes:
            raise ValueError(f"access_records_max_bytes={self.access_records_max_bytes!r} must "
                             f"be below record_log_max_bytes={self.record_log_max_bytes!r}: "
                             "request records keep the rest of the record log")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> AgentConfig:
        """Env vars first, then explicit overrides (CLI flags); None overrides are ignored."""
        values = read_env(OPTIONS, os.environ if env is None else env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _key_paths(text: str) -> tuple[Path, ...]:
    return tuple(Path(p.strip()) for p in text.split(",") if p.strip())


@dataclass(frozen=True)
class FleetConfig:
    """`vllm-audit fleet`: the consumer group that stores and verifies every pod's records."""
    store: str = declare(
        "--store", "VLLM_AUDIT_FLEET_STORE", "/var/lib/vllm-audit-fleet",
        "a chDB data directory (one fleet replica per directory) or a ClickHouse server URL "
        "clickhouse://user:password@host:8123 (several replicas)", metavar="DIR|URL")
    database: str = declare(
        "--database", "VLLM_AUDIT_FLEET_DATABASE", "vllm_audit",
        "the ClickHouse database of the fleet's tables", metavar="NAME")
    kafka_bootstrap: str = declare(
        "--kafka-bootstrap", "VLLM_AUDIT_FLEET_KAFKA_BOOTSTRAP", "",
        "Kafka bootstrap servers the agents publish to", metavar="HOST:PORT",
        default_note="required")
    kafka_topic_prefix: str = declare(
        "--kafka-topic-prefix", "VLLM_AUDIT_FLEET_KAFKA_TOPIC_PREFIX", "vllm-audit",
        "the agents' topic prefix: <prefix>.requests, .checkpoints, .access and .findings are "
        "read",
        metavar="PREFIX")
    group_id: str = declare(
        "--group-id", "VLLM_AUDIT_FLEET_GROUP_ID", "vllm-audit-fleet",
        "the consumer group; replicas in one group share the partitions", metavar="ID")
    log_public_keys: tuple[Path, ...] = declare(
        "--log-public-key", "VLLM_AUDIT_FLEET_LOG_PUBLIC_KEYS", (),
        "a trusted log key (PEM, raw or hex), or a directory of them (*.pub, *.pem); a log "
        "whose genesis names another key is flagged untrusted (repeatable)", metavar="PATH",
        parse=_key_paths, repeatable=True, show=lambda v: ",".join(map(str, v)),
        default_note="none: every log untrusted")
    witness_keys: tuple[Path, ...] = declare(
        "--witness-key", "VLLM_AUDIT_FLEET_WITNESS_KEYS", (),
        "a witness's public key (PEM, raw or hex), or a directory of them: the logs' "
        "cosignature records are checked against these (repeatable)", metavar="PATH",
        parse=_key_paths, repeatable=True, show=lambda v: ",".join(map(str, v)),
        default_note="none: cosignatures not checked")
    required_cosignatures: int = declare(
        "--required-cosignatures", "VLLM_AUDIT_FLEET_REQUIRED_COSIGNATURES", 1,
        "distinct --witness-key witnesses that must cosign a checkpoint for it to count as "
        "witnessed", metavar="N", check=positive)
    unwitnessed_seconds: float = declare(
        "--unwitnessed-seconds", "VLLM_AUDIT_FLEET_UNWITNESSED_SECONDS", 600.0,
        "a log whose oldest checkpoint has waited this long for its cosignatures is flagged "
        "unwitnessed (metric and alert; not a break)", metavar="S", check=positive)
    detections: bool = declare(
        "--detections", "VLLM_AUDIT_FLEET_DETECTIONS", False,
        "run the detection rules over every pod's request and access records (scope fleet); "
        "findings go to the store's findings table", default_note="off")
    detection_rules_file: Path | None = declare(
        "--detection-rules", "VLLM_AUDIT_FLEET_DETECTION_RULES", None,
        "YAML/JSON/TOML thresholds of the detection rules (README: Detections)",
        metavar="FILE", default_note="the defaults")
    http_address: str = declare(
        "--http-address", "VLLM_AUDIT_FLEET_HTTP_ADDRESS", "127.0.0.1:9420",
        "HTTP port of /metrics and /healthz", metavar="HOST:PORT", check=_address)
    gap_seconds: float = declare(
        "--gap-seconds", "VLLM_AUDIT_FLEET_GAP_SECONDS", 120.0,
        "a log's next seq missing this long after a later one arrived is a gap (the log is "
        "flagged broken)", metavar="S", check=positive)
    max_batch_records: int = declare(
        "--max-batch-records", "VLLM_AUDIT_FLEET_MAX_BATCH_RECORDS", 20_000,
        "records per stored batch, gathered over Kafka fetches (stored, then committed; the "
        "next is verified while the store inserts it)", metavar="N", check=positive)
    max_batch_ms: int = declare(
        "--max-batch-ms", "VLLM_AUDIT_FLEET_MAX_BATCH_MS", 500,
        "how long a batch gathers fetches after its first record before it is stored, if "
        "--max-batch-records did not fill it first", metavar="MS", check=positive)
    content_days: int = declare(
        "--content-days", "VLLM_AUDIT_FLEET_CONTENT_DAYS", 30,
        "days a request record holding prompt or output text keeps its bytes (its summary "
        "columns stay); 0 = for ever", metavar="DAYS", check=not_negative)
    metadata_days: int = declare(
        "--metadata-days", "VLLM_AUDIT_FLEET_METADATA_DAYS", 180,
        "days request and access records are kept; 0 = for ever", metavar="DAYS",
        check=not_negative)
    evidence_days: int = declare(
        "--evidence-days", "VLLM_AUDIT_FLEET_EVIDENCE_DAYS", 400,
        "days genesis, checkpoint, seal, cosignature and level records are kept; 0 = for ever",
        metavar="DAYS", check=not_negative)

    def __post_init__(self) -> None:
        for option in FLEET_OPTIONS:
            option.validate(getattr(self, option.field))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> FleetConfig:
        values = read_env(FLEET_OPTIONS, os.environ if env is None else env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


#: Every fleet option, in the order of `vllm-audit fleet -h` and the README's table.
FLEET_OPTIONS: tuple[Option, ...] = options_of(FleetConfig)

#: Every agent option, in the order of `vllm-audit agent -h` and the README's table.
OPTIONS: tuple[Option, ...] = options_of(AgentConfig)
_BY_FIELD = {option.field: option for option in OPTIONS}


def env_var(field: str) -> str:
    """The environment variable of the option on AgentConfig's `field`."""
    return _BY_FIELD[field].env


if __name__ == "__main__":  # the README's tables: python -m vllm_audit_agent.config [fleet]
    sys.stdout.write(markdown_table(FLEET_OPTIONS if sys.argv[1:] == ["fleet"] else OPTIONS)
                     + "\n")
