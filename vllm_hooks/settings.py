"""Hook settings, read once per process from environment variables.

Every variable is a documented constant here; nothing else in the hook reads the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum

#: "true" installs the hook (the project's own switch).
ENV_ENABLED = "VLLM_AUDIT_ENABLED"
#: Alternative switch with the same meaning, kept for the structured-output audit's users.
ENV_STRUCTURED_OUTPUT_AUDIT = "VLLM_STRUCTURED_OUTPUT_AUDIT"
#: Agent ingest address: a Unix socket path, or "unix:/path", or "host:port" (TCP).
ENV_AGENT_ADDRESS = "VLLM_AUDIT_AGENT_ADDRESS"
#: Level until the agent pushes one: off | summary | full | full-with-allowed-sets.
ENV_LEVEL = "VLLM_AUDIT_LEVEL"
#: Events held in memory before new ones are dropped (and counted).
ENV_BUFFER_EVENTS = "VLLM_AUDIT_BUFFER_EVENTS"
#: Bytes of sent-but-unacknowledged batches kept for resend after a reconnect.
ENV_UNACKED_BYTES = "VLLM_AUDIT_UNACKED_BYTES"
#: Events per batch and the sender's flush interval in milliseconds.
ENV_BATCH_EVENTS = "VLLM_AUDIT_BATCH_EVENTS"
ENV_FLUSH_MS = "VLLM_AUDIT_FLUSH_MS"
#: Serialised bytes per batch (at least MIN_BATCH_BYTES). Batches are cut by bytes as well as
#: by count; a single event larger than this is truncated to fit and marked `truncated`.
ENV_MAX_BATCH_BYTES = "VLLM_AUDIT_MAX_BATCH_BYTES"
#: The gRPC channel's message size limit; must exceed the batch cap. Give the agent the same
#: (or a larger) limit, or it ends the stream on every batch between its limit and this one.
ENV_MAX_MESSAGE_BYTES = "VLLM_AUDIT_MAX_MESSAGE_BYTES"
#: Milliseconds the oldest sent batch may wait for an answer before the sender cancels the
#: stream, reconnects and resends.
ENV_ACK_TIMEOUT_MS = "VLLM_AUDIT_ACK_TIMEOUT_MS"
#: Capture policies: none | hmac | redact | full.
ENV_CAPTURE_PROMPT = "VLLM_AUDIT_CAPTURE_PROMPT"
ENV_CAPTURE_OUTPUT = "VLLM_AUDIT_CAPTURE_OUTPUT"
ENV_CAPTURE_CLIENT_IP = "VLLM_AUDIT_CAPTURE_CLIENT_IP"
#: Secret for the hmac policy. Without it a random per-process key is used (not joinable).
ENV_HMAC_KEY = "VLLM_AUDIT_HMAC_KEY"
#: Header that names the tenant of a request.
ENV_TENANT_HEADER = "VLLM_AUDIT_TENANT_HEADER"

# -- start-up policy (read by register() on its own: it must work when the rest is invalid) --
#: "true": an invalid setting only logs and vLLM serves unaudited. Default: vLLM refuses to
#: start, naming the variable (an audit that is silently off fails its purpose).
ENV_FAIL_OPEN = "VLLM_AUDIT_FAIL_OPEN"
#: "true": vLLM refuses to start when the agent cannot be reached at start-up.
ENV_REQUIRED = "VLLM_AUDIT_REQUIRED"
#: Seconds register() keeps trying the agent under VLLM_AUDIT_REQUIRED (a sidecar may start
#: a moment after vLLM).
ENV_REQUIRED_WAIT = "VLLM_AUDIT_REQUIRED_WAIT_SECONDS"

DEFAULT_AGENT_ADDRESS = "/var/run/vllm-audit/ingest.sock"
DEFAULT_MAX_BATCH_BYTES = 1 << 20
DEFAULT_MAX_MESSAGE_BYTES = 8 << 20
DEFAULT_ACK_TIMEOUT_MS = 10_000
#: Room for a batch's header, its gap marker and one truncated event.
MIN_BATCH_BYTES = 4096
#: gRPC takes message limits as a C int.
MAX_MESSAGE_BYTES_LIMIT = (1 << 31) - 1
CAPTURE_POLICIES = ("none", "hmac", "redact", "full")


class Level(IntEnum):
    """Mirrors vllm_audit.v1.AuditLevel numerically, so the wire value converts directly."""

    OFF = 1
    SUMMARY = 2
    FULL = 3
    FULL_WITH_ALLOWED_SETS = 4

    @classmethod
    def parse(cls, text: str) -> Level:
        key = text.strip().lower().replace("-", "_")
        for level in cls:
            if level.name.lower() == key:
                return level
        names = ", ".join(level.name.lower().replace("_", "-") for level in cls)
        raise ValueError(f"unknown audit level {text!r}; expected one of: {names}")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _positive_int(env: dict[str, str] | os._Environ[str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be > 0")
    return value


def _policy(env: dict[str, str] | os._Environ[str], name: str, default: str) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in CAPTURE_POLICIES:
        raise ValueError(f"{name}={value!r}; expected one of {', '.join(CAPTURE_POLICIES)}")
    return value


@dataclass(frozen=True)
class HookSettings:
    enabled: bool = False
    agent_address: str = DEFAULT_AGENT_ADDRESS
    level: Level = Level.SUMMARY
    buffer_events: int = 65536
    unacked_bytes: int = 64 * 1024 * 1024
    batch_events: int = 2048
    flush_ms: int = 20
    capture_prompt: str = "hmac"
    capture_output: str = "hmac"
    capture_client_ip: str = "hmac"
    hmac_key: bytes | None = None
    tenant_header: str = "x-tenant-id"
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ack_timeout_ms: int = DEFAULT_ACK_TIMEOUT_MS

    def __post_init__(self) -> None:
        # Checked here, not only in from_env, so settings built in code obey the same rules.
        if self.max_batch_bytes < MIN_BATCH_BYTES:
            raise ValueError(f"{ENV_MAX_BATCH_BYTES}={self.max_batch_bytes} must be >= "
                             f"{MIN_BATCH_BYTES}")
        if self.max_message_bytes > MAX_MESSAGE_BYTES_LIMIT:
            raise ValueError(f"{ENV_MAX_MESSAGE_BYTES}={self.max_message_bytes} must be <= "
                             f"{MAX_MESSAGE_BYTES_LIMIT}")
        if self.max_message_bytes <= self.max_batch_bytes:
            raise ValueError(f"{ENV_MAX_MESSAGE_BYTES}={self.max_message_bytes} must exceed "
                             f"{ENV_MAX_BATCH_BYTES}={self.max_batch_bytes}")
        if self.ack_timeout_ms <= 0:
            raise ValueError(f"{ENV_ACK_TIMEOUT_MS}={self.ack_timeout_ms} must be > 0")

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] | None = None) -> HookSettings:
        """Raises ValueError naming the variable when a value is wrong."""
        env = os.environ if env is None else env
        key = env.get(ENV_HMAC_KEY)
        return cls(
            enabled=_truthy(env.get(ENV_ENABLED)) or _truthy(env.get(ENV_STRUCTURED_OUTPUT_AUDIT)),
            agent_address=env.get(ENV_AGENT_ADDRESS) or DEFAULT_AGENT_ADDRESS,
            level=Level.parse(env.get(ENV_LEVEL) or "summary"),
            buffer_events=_positive_int(env, ENV_BUFFER_EVENTS, 65536),
            unacked_bytes=_positive_int(env, ENV_UNACKED_BYTES, 64 * 1024 * 1024),
            batch_events=_positive_int(env, ENV_BATCH_EVENTS, 2048),
            flush_ms=_positive_int(env, ENV_FLUSH_MS, 20),
            capture_prompt=_policy(env, ENV_CAPTURE_PROMPT, "hmac"),
            capture_output=_policy(env, ENV_CAPTURE_OUTPUT, "hmac"),
            capture_client_ip=_policy(env, ENV_CAPTURE_CLIENT_IP, "hmac"),
            hmac_key=key.encode() if key else None,
            tenant_header=(env.get(ENV_TENANT_HEADER) or "x-tenant-id").lower(),
            max_batch_bytes=_positive_int(env, ENV_MAX_BATCH_BYTES, DEFAULT_MAX_BATCH_BYTES),
            max_message_bytes=_positive_int(env, ENV_MAX_MESSAGE_BYTES, DEFAULT_MAX_MESSAGE_BYTES),
            ack_timeout_ms=_positive_int(env, ENV_ACK_TIMEOUT_MS, DEFAULT_ACK_TIMEOUT_MS),
        )

    def grpc_target(self) -> str:
        """A gRPC target for the agent address (a bare path means a Unix socket)."""
        address = self.agent_address
        if address.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
            return address
        if address.startswith("/"):
            return f"unix:{address}"
        return address


_cached: tuple[int, HookSettings] | None = None


def settings() -> HookSettings:
    """The process's settings, read from the environment once per pid (a forked child reads
    its own). Raises ValueError naming the variable when a value is wrong."""
    global _cached
    pid = os.getpid()
    cached = _cached
    if cached is None or cached[0] != pid:
        cached = (pid, HookSettings.from_env())
        _cached = cached
    return cached[1]


def start_policy(env: dict[str, str] | os._Environ[str] | None = None) -> tuple[bool, bool, float]:
    """(fail_open, required, required_wait_seconds), readable even when other settings are
    invalid. Raises ValueError naming the variable for a bad wait."""
    env = os.environ if env is None else env
    raw = env.get(ENV_REQUIRED_WAIT) or "10"
    try:
        wait = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_REQUIRED_WAIT}={raw!r} is not a number") from None
    return _truthy(env.get(ENV_FAIL_OPEN)), _truthy(env.get(ENV_REQUIRED)), max(0.0, wait)


def enabled_in_env(env: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """The on switch alone, readable even when other settings are invalid."""
    env = os.environ if env is None else env
    return _truthy(env.get(ENV_ENABLED)) or _truthy(env.get(ENV_STRUCTURED_OUTPUT_AUDIT))
