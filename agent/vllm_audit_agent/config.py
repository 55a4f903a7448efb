"""The agent's one typed configuration object, built at the edge (CLI flags over env vars).

Every environment variable is a documented constant below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vllm_audit.v1 import events_pb2

ENV_INGEST_SOCKET = "VLLM_AUDIT_INGEST_SOCKET"      # Unix socket for hooks
ENV_QUERY_ADDRESS = "VLLM_AUDIT_QUERY_ADDRESS"      # host:port of the query/control API
ENV_HTTP_ADDRESS = "VLLM_AUDIT_HTTP_ADDRESS"        # host:port of /metrics /healthz /readyz
ENV_DATA_DIR = "VLLM_AUDIT_DATA_DIR"                # WAL directory
ENV_WAL_FSYNC = "VLLM_AUDIT_WAL_FSYNC"              # always | batch | never
ENV_WAL_MAX_BYTES = "VLLM_AUDIT_WAL_MAX_BYTES"      # cap on what is owed downstream
ENV_WAL_SEGMENT_BYTES = "VLLM_AUDIT_WAL_SEGMENT_BYTES"  # unit of reclaim; 0 = derived from cap
ENV_MAX_TRAILS = "VLLM_AUDIT_MAX_TRAILS"
ENV_MAX_TRAIL_EVENTS = "VLLM_AUDIT_MAX_TRAIL_EVENTS"
ENV_MAX_TRAIL_BYTES = "VLLM_AUDIT_MAX_TRAIL_BYTES"  # memory cap of the trail store
ENV_SHUTDOWN_TIMEOUT = "VLLM_AUDIT_SHUTDOWN_TIMEOUT_SECONDS"  # < the pod's grace period
ENV_READY_REQUIRES = "VLLM_AUDIT_READY_REQUIRES"    # conditions /readyz requires (readiness.py)
ENV_KAFKA_BOOTSTRAP = "VLLM_AUDIT_KAFKA_BOOTSTRAP"  # unset = no Kafka
ENV_KAFKA_TOPIC_PREFIX = "VLLM_AUDIT_KAFKA_TOPIC_PREFIX"
ENV_AUDIT_LEVEL = "VLLM_AUDIT_LEVEL"                # pushed to every hook
ENV_LINGER_SECONDS = "VLLM_AUDIT_LINGER_SECONDS"
ENV_GPU = "VLLM_AUDIT_GPU"                          # nvml | none | fake
ENV_GPU_SCOPE = "VLLM_AUDIT_GPU_SCOPE"              # node | pod
ENV_SIGNING_KEY_FILE = "VLLM_AUDIT_SIGNING_KEY_FILE"  # Ed25519 key (PEM or raw 32 bytes)
ENV_CHECKPOINT_EVERY = "VLLM_AUDIT_CHECKPOINT_EVERY"  # records between signed checkpoints
ENV_CHECKPOINT_INTERVAL = "VLLM_AUDIT_CHECKPOINT_INTERVAL_SECONDS"
ENV_RECORD_RETENTION_DAYS = "VLLM_AUDIT_RECORD_RETENTION_DAYS"
ENV_STATS_HISTORY_BYTES = "VLLM_AUDIT_STATS_HISTORY_BYTES"
ENV_ENGINE_STATS_INTERVAL = "VLLM_AUDIT_ENGINE_STATS_INTERVAL_SECONDS"
ENV_RECORD_GRAMMAR_MAX_BYTES = "VLLM_AUDIT_RECORD_GRAMMAR_MAX_BYTES"
ENV_RECORD_LOG_MAX_BYTES = "VLLM_AUDIT_RECORD_LOG_MAX_BYTES"
# -- security of the query/control API (agent/vllm_audit_agent/auth.py) --
ENV_AUTH_TOKENS_FILE = "VLLM_AUDIT_AUTH_TOKENS_FILE"  # YAML/JSON: sha256, subject, role, tenant
ENV_TLS_CERT = "VLLM_AUDIT_TLS_CERT"                # PEM certificate of the query listener
ENV_TLS_KEY = "VLLM_AUDIT_TLS_KEY"                  # its PEM private key
ENV_TLS_CLIENT_CA = "VLLM_AUDIT_TLS_CLIENT_CA"      # set: mutual TLS, clients need a cert from it
ENV_ALLOW_INSECURE_REMOTE = "VLLM_AUDIT_ALLOW_INSECURE_REMOTE"  # true: plaintext beyond loopback
ENV_HTTP_TLS = "VLLM_AUDIT_HTTP_TLS"                  # true: the HTTP port over TLS
ENV_INGEST_SOCKET_GROUP = "VLLM_AUDIT_INGEST_SOCKET_GROUP"  # group of the 0660 ingest socket
ENV_METRICS_TOKEN_FILE = "VLLM_AUDIT_METRICS_TOKEN_FILE"    # set: /metrics needs this bearer
# Seconds a connected hook has to apply a new level before it counts as a mismatch.
ENV_LEVEL_APPLY_DEADLINE = "VLLM_AUDIT_LEVEL_APPLY_DEADLINE_SECONDS"
ENV_MAX_BATCH_BYTES = "VLLM_AUDIT_MAX_BATCH_BYTES"  # larger batches are refused (too_big)
ENV_MAX_MESSAGE_BYTES = "VLLM_AUDIT_MAX_MESSAGE_BYTES"  # gRPC receive limit of the ingest socket
# Deadline for the flush on SIGTERM; below the orchestrator's grace period (Kubernetes'
# terminationGracePeriodSeconds, 30 s by default) so the agent reports what it lost itself.

#: The conditions /readyz can require (api/readiness.py evaluates them; its docstring says
#: what each means); wal_writable by default.
CONDITIONS = ("wal_writable", "wal_not_full", "kafka_connected")
DEFAULT_REQUIRED = ("wal_writable",)


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


def parse_bool(field: str, text: str) -> bool:
    key = text.strip().lower()
    if key in ("1", "true", "yes", "on"):
        return True
    if key in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{field}={text!r} is not true or false")


def parse_address(field: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{field}={text!r} is not host:port")
    return host, int(port)


@dataclass(frozen=True)
class AgentConfig:
    ingest_socket: Path = Path("/var/run/vllm-audit/ingest.sock")
    query_address: str = "127.0.0.1:50051"
    http_address: str = "127.0.0.1:9400"
    data_dir: Path = Path("/var/lib/vllm-audit")
    wal_fsync: str = "batch"
    wal_max_bytes: int = 1 << 30
    wal_segment_bytes: int = 0
    max_trails: int = 100_000
    max_trail_events: int = 10_000
    #: The chart gives the agent 1 GiB; trails get a quarter of it by default.
    max_trail_bytes: int = 256 << 20
    #: The whole stop (drain ingest, flush trails, publisher, NVML) fits in this; it must be
    #: shorter than Kubernetes' terminationGracePeriodSeconds (30 s by default).
    shutdown_timeout_seconds: float = 20.0
    kafka_bootstrap: str | None = None
    kafka_topic_prefix: str = "vllm-audit"
    audit_level: int = events_pb2.AUDIT_LEVEL_SUMMARY
    linger_seconds: float = 30.0
    gpu: str = "nvml"
    gpu_interval_seconds: float = 5.0
    #: node: every GPU NVML sees; pod: only those the connected vLLM processes were given (a
    #: sidecar's NVML sees the whole node, NVIDIA_VISIBLE_DEVICES=all, as dcgm-exporter's does).
    gpu_scope: str = "node"
    #: Record log (<data_dir>/records): the signing key (None: generated in the data dir at
    #: the first start), checkpoint cadence, retention by age and size.
    signing_key_file: Path | None = None
    checkpoint_every: int = 1000
    checkpoint_interval_seconds: float = 10.0
    record_retention_days: float = 180.0
    record_log_max_bytes: int = 4 << 30
    #: Engine-stats time series on disk (<data_dir>/engine-stats, stats_history.py); 0 = off.
    stats_history_bytes: int = 64 << 20
    #: Seconds between published engine-stats snapshots, per engine (Kafka and the history).
    engine_stats_interval_seconds: float = 1.0
    #: Cap on the grammar events a record carries (records.grammar_proof); 0: none.
    record_grammar_max_bytes: int = 256 << 10
    #: None: the agent makes `<data_dir>/admin.token` at first start (local quick start).
    auth_tokens_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    #: The HTTP port (probes, /metrics, the management API) over TLS too, with tls_cert/key
    #: (and tls_client_ca: client certificates required); then the API may listen anywhere.
    http_tls: bool = False
    #: Plaintext on a non-loopback query address is refused unless this is set.
    allow_insecure_remote: bool = False
    ingest_socket_group: str | None = None
    metrics_token_file: Path | None = None
    level_apply_deadline_seconds: float = 10.0
    #: Conditions /readyz requires besides serving (agent/vllm_audit_agent/readiness.py).
    ready_requires: tuple[str, ...] = DEFAULT_REQUIRED
    #: A batch over this many bytes is refused as too_big (permanent: the hook drops it).
    max_batch_bytes: int = 2 << 20
    #: gRPC max receive message size of the ingest server; at least max_batch_bytes, so an
    #: oversize batch is answered with a refusal rather than a transport error.
    max_message_bytes: int = 8 << 20

    def __post_init__(self) -> None:
        parse_address("query_address", self.query_address)
        parse_address("http_address", self.http_address)
        if self.wal_fsync not in WAL_FSYNC_POLICIES:
            raise ValueError(f"wal_fsync={self.wal_fsync!r}; expected {WAL_FSYNC_POLICIES}")
        if self.gpu_scope not in GPU_SCOPES:
            raise ValueError(f"gpu_scope={self.gpu_scope!r}; expected one of {GPU_SCOPES}")
        if self.gpu not in GPU_READERS:
            raise ValueError(f"gpu={self.gpu!r}; expected one of {GPU_READERS}")
        for name in ("wal_max_bytes", "max_trails", "max_trail_events", "max_trail_bytes",
                     "shutdown_timeout_seconds", "max_batch_bytes", "checkpoint_every",
                     "checkpoint_interval_seconds", "record_retention_days",
                     "record_log_max_bytes", "engine_stats_interval_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0")
        if self.record_grammar_max_bytes < 0:
            raise ValueError(f"record_grammar_max_bytes={self.record_grammar_max_bytes!r} "
                             "must be >= 0")
        if self.stats_history_bytes < 0:
            raise ValueError(f"stats_history_bytes={self.stats_history_bytes!r} must be >= 0")
        if self.wal_segment_bytes < 0:
            raise ValueError(f"wal_segment_bytes={self.wal_segment_bytes!r} must be >= 0")
        if not self.max_batch_bytes <= self.max_message_bytes < 1 << 31:  # gRPC takes an int32
            raise ValueError(f"max_message_bytes={self.max_message_bytes!r} must be >= "
                             f"max_batch_bytes={self.max_batch_bytes!r} and < 2 GiB")
        if self.linger_seconds <= 0:
            raise ValueError(f"linger_seconds={self.linger_seconds!r} must be > 0")
        parse_required(",".join(self.ready_requires))
        if self.audit_level not in LEVELS.values():
            raise ValueError(f"audit_level={self.audit_level!r} is not a known level")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.http_tls and (self.tls_cert is None or self.tls_key is None):
            raise ValueError("http_tls (the HTTP port over TLS) needs tls_cert and tls_key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.level_apply_deadline_seconds <= 0:
            raise ValueError(f"level_apply_deadline_seconds={self.level_apply_deadline_seconds!r}"
                             " must be > 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> AgentConfig:
        """Env vars first, then explicit overrides (CLI flags); None overrides are ignored."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}

        def number(var: str, field: str, kind: type) -> None:
            if env.get(var):
                try:
                    values[field] = kind(env[var])
                except ValueError:
                    raise ValueError(f"{var}={env[var]!r} is not a {kind.__name__}") from None

        if env.get(ENV_INGEST_SOCKET):
            values["ingest_socket"] = Path(env[ENV_INGEST_SOCKET])
        if env.get(ENV_DATA_DIR):
            values["data_dir"] = Path(env[ENV_DATA_DIR])
        if env.get(ENV_SIGNING_KEY_FILE):
            values["signing_key_file"] = Path(env[ENV_SIGNING_KEY_FILE])
        for var, field in ((ENV_QUERY_ADDRESS, "query_address"), (ENV_HTTP_ADDRESS, "http_address"),
                           (ENV_WAL_FSYNC, "wal_fsync"), (ENV_KAFKA_BOOTSTRAP, "kafka_bootstrap"),
                           (ENV_KAFKA_TOPIC_PREFIX, "kafka_topic_prefix"), (ENV_GPU, "gpu"),
                           (ENV_GPU_SCOPE, "gpu_scope")):
            if env.get(var):
                values[field] = env[var]
        number(ENV_WAL_MAX_BYTES, "wal_max_bytes", int)
        number(ENV_WAL_SEGMENT_BYTES, "wal_segment_bytes", int)
        number(ENV_MAX_TRAILS, "max_trails", int)
        number(ENV_MAX_TRAIL_EVENTS, "max_trail_events", int)
        number(ENV_MAX_TRAIL_BYTES, "max_trail_bytes", int)
        number(ENV_SHUTDOWN_TIMEOUT, "shutdown_timeout_seconds", float)
        number(ENV_LINGER_SECONDS, "linger_seconds", float)
        number(ENV_CHECKPOINT_EVERY, "checkpoint_every", int)
        number(ENV_CHECKPOINT_INTERVAL, "checkpoint_interval_seconds", float)
        number(ENV_RECORD_RETENTION_DAYS, "record_retention_days", float)
        number(ENV_RECORD_LOG_MAX_BYTES, "record_log_max_bytes", int)
        number(ENV_STATS_HISTORY_BYTES, "stats_history_bytes", int)
        number(ENV_ENGINE_STATS_INTERVAL, "engine_stats_interval_seconds", float)
        number(ENV_RECORD_GRAMMAR_MAX_BYTES, "record_grammar_max_bytes", int)
        if env.get(ENV_READY_REQUIRES) is not None:
            values["ready_requires"] = parse_required(env[ENV_READY_REQUIRES])
        number(ENV_MAX_BATCH_BYTES, "max_batch_bytes", int)
        number(ENV_MAX_MESSAGE_BYTES, "max_message_bytes", int)
        if env.get(ENV_AUDIT_LEVEL):
            values["audit_level"] = parse_level(env[ENV_AUDIT_LEVEL])
        for var, field in ((ENV_AUTH_TOKENS_FILE, "auth_tokens_file"), (ENV_TLS_CERT, "tls_cert"),
                           (ENV_TLS_KEY, "tls_key"), (ENV_TLS_CLIENT_CA, "tls_client_ca"),
                           (ENV_METRICS_TOKEN_FILE, "metrics_token_file")):
            if env.get(var):
                values[field] = Path(env[var])
        if env.get(ENV_INGEST_SOCKET_GROUP):
            values["ingest_socket_group"] = env[ENV_INGEST_SOCKET_GROUP]
        if env.get(ENV_ALLOW_INSECURE_REMOTE):
            values["allow_insecure_remote"] = parse_bool(ENV_ALLOW_INSECURE_REMOTE,
                                                         env[ENV_ALLOW_INSECURE_REMOTE])
        if env.get(ENV_HTTP_TLS):
            values["http_tls"] = parse_bool(ENV_HTTP_TLS, env[ENV_HTTP_TLS])
        number(ENV_LEVEL_APPLY_DEADLINE, "level_apply_deadline_seconds", float)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
