"""Hook settings, read once per process from environment variables.

Every variable is a documented constant here; nothing else in the hook reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vllm_hooks.config.client_address import Network
    from vllm_hooks.config.identity_file import KeyIdentity


#: "true" installs the hook (the project's own switch).
ENV_ENABLED = "VLLM_AUDIT_ENABLED"
#: Alternative switch with the same meaning, kept for the structured-output audit's users.
ENV_STRUCTURED_OUTPUT_AUDIT = "VLLM_STRUCTURED_OUTPUT_AUDIT"
#: Agent ingest address: a Unix socket path, or "unix:/path", or "host:port" (TCP).
ENV_AGENT_ADDRESS = "VLLM_AUDIT_AGENT_ADDRESS"
#: Level until the agent pushes one: off | summary | key-events | full | full-with-allowed-sets.
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
#: Header a trusted proxy sets to name the tenant of a request (default x-tenant-id). Believed
#: only from a peer in VLLM_AUDIT_TRUSTED_PROXIES (identity.py); from any other, ignored.
ENV_TENANT_HEADER = "VLLM_AUDIT_TENANT_HEADER"
#: Header a trusted proxy sets to name the authenticated user (no default: off), e.g.
#: x-forwarded-user (oauth2-proxy). Same trust rule as the tenant header.
ENV_USER_HEADER = "VLLM_AUDIT_USER_HEADER"
#: Comma-separated CIDRs of proxies whose X-Forwarded-For and identity headers are believed
#: (client_address.py, identity.py).
ENV_TRUSTED_PROXIES = "VLLM_AUDIT_TRUSTED_PROXIES"
#: YAML/JSON file mapping API keys' SHA-256 (never the keys) to a user and/or tenant
#: (identity_file.py): the most trusted identity source.
ENV_IDENTITY_FILE = "VLLM_AUDIT_IDENTITY_FILE"

# -- The first seed design's variables, each with its seed meaning mapped onto this design. --
#: true: record the allowed-token set of every step (implies level full-with-allowed-sets).
ENV_RECORD_ALLOWED_TOKENS = "VLLM_AUDIT_RECORD_ALLOWED_TOKENS"
#: true: record every grammar step, not only the summary (implies level full).
ENV_RECORD_FULL_EVENTS = "VLLM_AUDIT_RECORD_FULL_EVENTS"
#: true: keep the grammar's spec text in GrammarCompiled (cut at VLLM_AUDIT_GRAMMAR_MAX_BYTES),
#: so a trail is self-contained and `vllm-audit replay` can re-run it.
ENV_INCLUDE_GRAMMAR = "VLLM_AUDIT_INCLUDE_GRAMMAR"
ENV_GRAMMAR_MAX_BYTES = "VLLM_AUDIT_GRAMMAR_MAX_BYTES"
#: Level full-with-allowed-sets: the largest encoded allowed-token set kept for one step, and
#: for all steps of one request. A set over either cap is dropped for its step (the step says
#: allowed_set_truncated; the request's summary counts it by cap). The step cap is also held
#: to a quarter of VLLM_AUDIT_MAX_BATCH_BYTES so a set never forces a batch cut. The default
#: step cap keeps a JSON schema's largest row at a 128k vocabulary (inside a string: ~9 KB as
#: disallowed ids, measured) and refuses the raw 16 KiB row of a dense scatter.
ENV_ALLOWED_SET_MAX_BYTES = "VLLM_AUDIT_ALLOWED_SET_MAX_BYTES"
ENV_ALLOWED_SETS_TRAIL_MAX_BYTES = "VLLM_AUDIT_ALLOWED_SETS_TRAIL_MAX_BYTES"
#: Rows copied on the engine thread wait in the buffer for the sender thread to encode them.
#: While the buffer holds more than this many bytes of them (reckoned as if every buffered
#: event held one), new steps are captured without their set (counted): a lagging sender
#: sheds sets first, never steps, and the buffer's memory stays bounded.
ENV_ALLOWED_SETS_BACKLOG_BYTES = "VLLM_AUDIT_ALLOWED_SETS_BACKLOG_BYTES"
DEFAULT_ALLOWED_SET_MAX_BYTES = 12 * 1024
DEFAULT_ALLOWED_SETS_TRAIL_MAX_BYTES = 1 << 20
DEFAULT_ALLOWED_SETS_BACKLOG_BYTES = 64 << 20
#: The seed's synchronous mode (false) is not offered: the engine thread only appends to a
#: bounded buffer and a background thread sends, so vLLM never waits on the audit. false is
#: accepted and answered with a startup warning saying so.
ENV_ASYNC = "VLLM_AUDIT_ASYNC"
#: Persistence is the agent's: its ingest WAL and record log under `--data-dir`. In the hook
#: these only produce a startup message pointing there (VLLM_AUDIT_LOG_DIR is the agent's
#: data directory; VLLM_AUDIT_PERSIST=false cannot turn off what acknowledgements rely on).
ENV_PERSIST = "VLLM_AUDIT_PERSIST"
ENV_LOG_DIR = "VLLM_AUDIT_LOG_DIR"
#: true: chat and completion responses carry usage.structured_output_audit.
ENV_IN_RESPONSE = "VLLM_AUDIT_IN_RESPONSE"
#: What the response carries: summary (the trail's audit summary) | full (also its events).
ENV_RESPONSE_LEVEL = "VLLM_AUDIT_RESPONSE_LEVEL"
#: Where the API server reads a request's audit for the response: the agent's query API.
ENV_QUERY_ADDRESS = "VLLM_AUDIT_QUERY_ADDRESS"
#: Bearer token for that query API (role auditor or admin); kept out of logs.
ENV_QUERY_TOKEN = "VLLM_AUDIT_QUERY_TOKEN"
#: Longest a response waits for its audit (the engine's events reach the agent in ~flush ms).
ENV_RESPONSE_TIMEOUT_MS = "VLLM_AUDIT_RESPONSE_TIMEOUT_MS"
#: true: the hook clocks its own calls on vLLM's threads and its sender threads' CPU time and
#: reports them on every batch (Batch.self_timing; the agent exports vllm_audit_hook_self_*).
#: Chosen once, when the hook wraps vLLM: off, the untimed wrappers run and nothing is clocked.
ENV_SELF_TIMING = "VLLM_AUDIT_SELF_TIMING"
#: Trails kept in memory: the agent's trail store cap. Validated here, applied by the agent.
ENV_MAX_TRAILS = "VLLM_AUDIT_MAX_TRAILS"

RESPONSE_LEVELS = ("summary", "full")
#: Named starting points (PRESETS); every variable set explicitly overrides its preset value.
ENV_PRESET = "VLLM_AUDIT_PRESET"

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
    """Audit levels. The int is a *rank* (what a level captures, in increasing order), so call
    sites compare with `>=`; the wire number is `vllm_audit.v1.AuditLevel`, where KEY_EVENTS was
    appended as 5 (wire numbers are forever), hence the two differ. Names match the proto enum
    without its AUDIT_LEVEL_ prefix (a unit test holds them together)."""

    OFF = 10
    SUMMARY = 20
    #: Compile, first and last step, rejections, rollbacks, errors and finish.
    KEY_EVENTS = 25
    FULL = 30
    FULL_WITH_ALLOWED_SETS = 40

    @property
    def wire(self) -> int:
        from vllm_audit.v1 import events_pb2 as pb

        return int(pb.AuditLevel.Value("AUDIT_LEVEL_" + self.name))

    @classmethod
    def from_wire(cls, value: int) -> Level:
        """Raises ValueError for a wire value with no level (including UNSPECIFIED)."""
        from vllm_audit.v1 import events_pb2 as pb

        name = pb.AuditLevel.Name(value).removeprefix("AUDIT_LEVEL_")
        if name not in cls.__members__:
            raise ValueError(f"no audit level for wire value {value}")
        return cls[name]

    @classmethod
    def parse(cls, text: str) -> Level:
        key = text.strip().lower().replace("-", "_")
        for level in cls:
            if level.name.lower() == key:
                return level
        names = ", ".join(level.name.lower().replace("_", "-") for level in cls)
        raise ValueError(f"unknown audit level {text!r}; expected one of: {names}")


@dataclass(frozen=True)
class Preset:
    level: Level
    include_grammar: bool
    in_response: bool = False
    response_level: str = "summary"


PRESETS: dict[str, Preset] = {
    # Who called what and the structured-output summary: the cheapest useful audit.
    "minimal": Preset(Level.SUMMARY, include_grammar=False),
    # The seed's middle granularity, with the grammar kept so a trail is self-contained.
    "standard": Preset(Level.KEY_EVENTS, include_grammar=True),
    # Every step with its allowed count and the grammar: `vllm-audit replay` can prove it.
    "forensic": Preset(Level.FULL, include_grammar=True),
    # Everything, the allowed sets too, and the audit in each response.
    "debug": Preset(Level.FULL_WITH_ALLOWED_SETS, include_grammar=True, in_response=True,
                    response_level="full"),
}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _bool(env: dict[str, str] | os._Environ[str], name: str, default: bool) -> bool:
    """The seed's boolean variables: a wrong value is an error naming the variable."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean; expected true or false")


def _preset(env: dict[str, str] | os._Environ[str]) -> Preset:
    name = (env.get(ENV_PRESET) or "minimal").strip().lower()
    if name not in PRESETS:
        raise ValueError(f"{ENV_PRESET}={name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def _seed_level(env: dict[str, str] | os._Environ[str], default: Level = Level.SUMMARY) -> Level:
    """VLLM_AUDIT_LEVEL, or the level the seed's RECORD_* variables imply. Both set and the
    explicit level below what a RECORD_* variable asks for is a contradiction, not a guess."""
    implied, because = default, ""
    for name, level in ((ENV_RECORD_FULL_EVENTS, Level.FULL),
                        (ENV_RECORD_ALLOWED_TOKENS, Level.FULL_WITH_ALLOWED_SETS)):
        if _bool(env, name, False):
            because = name
            implied = max(implied, level)
    explicit = env.get(ENV_LEVEL)
    if not explicit:
        return implied
    level = Level.parse(explicit)
    if because and level < implied:
        raise ValueError(
            f"{because}=true needs level {implied.name.lower().replace('_', '-')} but "
            f"{ENV_LEVEL}={explicit!r}; unset one of them"
        )
    return level


def _choice(env: dict[str, str] | os._Environ[str], name: str, choices: tuple[str, ...],
            default: str) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {', '.join(choices)}")
    return value


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


def _trusted_proxies(env: dict[str, str] | os._Environ[str]) -> tuple[Network, ...]:
    text = env.get(ENV_TRUSTED_PROXIES)
    if not text:
        return ()  # the usual case imports nothing more: disabled must cost nothing
    from vllm_hooks.config.client_address import parse_networks

    return parse_networks(ENV_TRUSTED_PROXIES, text)


def _identities(env: dict[str, str] | os._Environ[str]) -> dict[str, KeyIdentity]:
    path = (env.get(ENV_IDENTITY_FILE) or "").strip()
    if not path:
        return {}  # nothing more is imported without a mapping
    from vllm_hooks.config.identity_file import load_identity_file

    return load_identity_file(ENV_IDENTITY_FILE, path)


#: RFC 9110 token characters: what a header name may be made of.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def _header(env: dict[str, str] | os._Environ[str], name: str, default: str) -> str:
    raw = env.get(name)
    value = (default if raw is None or not raw.strip() else raw).strip().lower()
    if not set(value) <= _TOKEN:
        raise ValueError(f"{name}={raw!r} is not an HTTP header name")
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
    user_header: str = ""
    trusted_proxies: tuple[Network, ...] = ()
    #: API key SHA-256 -> identity (VLLM_AUDIT_IDENTITY_FILE); kept out of repr and hash.
    identities: Mapping[str, KeyIdentity] = field(default_factory=dict, repr=False,
                                                  compare=False)
    # -- the seed's variables (see the ENV_* constants above for how each maps) --
    include_grammar: bool = False
    grammar_max_bytes: int = 64 * 1024
    allowed_set_max_bytes: int = DEFAULT_ALLOWED_SET_MAX_BYTES
    allowed_sets_trail_max_bytes: int = DEFAULT_ALLOWED_SETS_TRAIL_MAX_BYTES
    allowed_sets_backlog_bytes: int = DEFAULT_ALLOWED_SETS_BACKLOG_BYTES
    async_requested: bool = True
    persist: bool | None = None
    log_dir: str = ""
    in_response: bool = False
    response_level: str = "summary"
    max_trails: int | None = None
    query_address: str = "127.0.0.1:50051"
    query_token: str = field(default="", repr=False)
    response_timeout_ms: int = 500
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ack_timeout_ms: int = DEFAULT_ACK_TIMEOUT_MS
    self_timing: bool = False

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
        preset = _preset(env)
        return cls(
            enabled=_truthy(env.get(ENV_ENABLED)) or _truthy(env.get(ENV_STRUCTURED_OUTPUT_AUDIT)),
            agent_address=env.get(ENV_AGENT_ADDRESS) or DEFAULT_AGENT_ADDRESS,
            level=_seed_level(env, preset.level),
            buffer_events=_positive_int(env, ENV_BUFFER_EVENTS, 65536),
            unacked_bytes=_positive_int(env, ENV_UNACKED_BYTES, 64 * 1024 * 1024),
            batch_events=_positive_int(env, ENV_BATCH_EVENTS, 2048),
            flush_ms=_positive_int(env, ENV_FLUSH_MS, 20),
            capture_prompt=_policy(env, ENV_CAPTURE_PROMPT, "hmac"),
            capture_output=_policy(env, ENV_CAPTURE_OUTPUT, "hmac"),
            capture_client_ip=_policy(env, ENV_CAPTURE_CLIENT_IP, "hmac"),
            hmac_key=key.encode() if key else None,
            tenant_header=_header(env, ENV_TENANT_HEADER, "x-tenant-id"),
            user_header=_header(env, ENV_USER_HEADER, ""),
            trusted_proxies=_trusted_proxies(env),
            identities=_identities(env),
            include_grammar=_bool(env, ENV_INCLUDE_GRAMMAR, preset.include_grammar),
            grammar_max_bytes=_positive_int(env, ENV_GRAMMAR_MAX_BYTES, 64 * 1024),
            allowed_set_max_bytes=_positive_int(env, ENV_ALLOWED_SET_MAX_BYTES,
                                                DEFAULT_ALLOWED_SET_MAX_BYTES),
            allowed_sets_trail_max_bytes=_positive_int(env, ENV_ALLOWED_SETS_TRAIL_MAX_BYTES,
                                                       DEFAULT_ALLOWED_SETS_TRAIL_MAX_BYTES),
            allowed_sets_backlog_bytes=_positive_int(env, ENV_ALLOWED_SETS_BACKLOG_BYTES,
                                                     DEFAULT_ALLOWED_SETS_BACKLOG_BYTES),
            async_requested=_bool(env, ENV_ASYNC, True),
            persist=_bool(env, ENV_PERSIST, True) if env.get(ENV_PERSIST) else None,
            log_dir=env.get(ENV_LOG_DIR) or "",
            in_response=_bool(env, ENV_IN_RESPONSE, preset.in_response),
            response_level=_choice(env, ENV_RESPONSE_LEVEL, RESPONSE_LEVELS,
                                   preset.response_level),
            max_trails=_positive_int(env, ENV_MAX_TRAILS, 1) if env.get(ENV_MAX_TRAILS) else None,
            query_address=env.get(ENV_QUERY_ADDRESS) or "127.0.0.1:50051",
            query_token=(env.get(ENV_QUERY_TOKEN) or "").strip(),
            response_timeout_ms=_positive_int(env, ENV_RESPONSE_TIMEOUT_MS, 500),
            max_batch_bytes=_positive_int(env, ENV_MAX_BATCH_BYTES, DEFAULT_MAX_BATCH_BYTES),
            max_message_bytes=_positive_int(env, ENV_MAX_MESSAGE_BYTES, DEFAULT_MAX_MESSAGE_BYTES),
            ack_timeout_ms=_positive_int(env, ENV_ACK_TIMEOUT_MS, DEFAULT_ACK_TIMEOUT_MS),
            self_timing=_bool(env, ENV_SELF_TIMING, False),
        )

    def startup_notes(self) -> list[str]:
        """What the seed's variables that this design answers elsewhere do here, said once at
        startup so nobody believes a setting took effect when it did not."""
        notes = []
        if not self.async_requested:
            notes.append(
                f"{ENV_ASYNC}=false is not offered: the engine thread only appends to a bounded "
                "buffer and a background thread sends, so vLLM never waits on the audit"
            )
        if self.persist is False:
            notes.append(
                f"{ENV_PERSIST}=false is not offered: the agent's write-ahead log is what its "
                "acknowledgements rest on; use the agent's retention settings instead"
            )
        if self.persist or self.log_dir:
            where = self.log_dir or "its --data-dir"
            notes.append(
                f"{ENV_PERSIST}/{ENV_LOG_DIR}: audit records persist in the agent's record log "
                f"({where}); start the agent with --data-dir {self.log_dir or 'DIR'}"
            )
        if self.max_trails is not None:
            notes.append(
                f"{ENV_MAX_TRAILS}={self.max_trails} is the agent's trail store cap; set it "
                "in the agent's environment (the hook keeps no trails)"
            )
        return notes

    def allowed_set_step_cap(self) -> int:
        """The per-step cap in force: the setting, held under a quarter of the batch cap."""
        return min(self.allowed_set_max_bytes, self.max_batch_bytes // 4)

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
