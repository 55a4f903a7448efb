"""The hook's settings (`HookSettings`), read once per process from the environment
(`settings()`), with the rules that hold between them.

The variables and their defaults are the table in `env_vars`; each value is read by
`env_parsing`; levels and presets are `levels`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vllm_hooks.config.env_parsing import (
    read_address,
    read_bool,
    read_choice,
    read_digest_cache,
    read_header,
    read_identities,
    read_level,
    read_policy,
    read_positive_int,
    read_preset,
    read_query_address,
    read_trusted_proxies,
)
from vllm_hooks.config.env_vars import (
    DEFAULT_ACK_TIMEOUT_MS,
    DEFAULT_AGENT_ADDRESS,
    DEFAULT_ALLOWED_SET_MAX_BYTES,
    DEFAULT_ALLOWED_SETS_BACKLOG_BYTES,
    DEFAULT_ALLOWED_SETS_TRAIL_MAX_BYTES,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_SIGNALS_MAX_CHARS,
    ENV_ACK_TIMEOUT_MS,
    ENV_AGENT_ADDRESS,
    ENV_ALLOWED_SET_MAX_BYTES,
    ENV_ALLOWED_SETS_BACKLOG_BYTES,
    ENV_ALLOWED_SETS_TRAIL_MAX_BYTES,
    ENV_ASYNC,
    ENV_BATCH_EVENTS,
    ENV_BUFFER_EVENTS,
    ENV_CAPTURE_CLIENT_IP,
    ENV_CAPTURE_OUTPUT,
    ENV_CAPTURE_PROMPT,
    ENV_FLUSH_MS,
    ENV_GRAMMAR_MAX_BYTES,
    ENV_HMAC_KEY,
    ENV_IN_RESPONSE,
    ENV_INCLUDE_GRAMMAR,
    ENV_LOG_DIR,
    ENV_MAX_BATCH_BYTES,
    ENV_MAX_MESSAGE_BYTES,
    ENV_MAX_TRAILS,
    ENV_PERSIST,
    ENV_QUERY_TOKEN,
    ENV_RESPONSE_LEVEL,
    ENV_RESPONSE_TIMEOUT_MS,
    ENV_SELF_TIMING,
    ENV_SIGNALS,
    ENV_SIGNALS_MAX_CHARS,
    ENV_TENANT_HEADER,
    ENV_UNACKED_BYTES,
    ENV_USER_HEADER,
    MAX_MESSAGE_BYTES_LIMIT,
    MIN_BATCH_BYTES,
    RESPONSE_LEVELS,
)
from vllm_hooks.config.levels import Level
from vllm_hooks.config.start_policy import enabled_in_env

if TYPE_CHECKING:
    from vllm_hooks.config.client_address import Network
    from vllm_hooks.config.identity_file import KeyIdentity


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
    #: Content signals of prompt and output (signals.py), and the characters scanned per side.
    signals: bool = True
    signals_max_chars: int = DEFAULT_SIGNALS_MAX_CHARS
    tenant_header: str = "x-tenant-id"
    user_header: str = ""
    trusted_proxies: tuple[Network, ...] = ()
    #: API key SHA-256 -> identity (VLLM_AUDIT_IDENTITY_FILE); kept out of repr and hash.
    identities: Mapping[str, KeyIdentity] = field(default_factory=dict, repr=False,
                                                  compare=False)
    # -- the seed's variables (see the ENV_* constants in env_vars for how each maps) --
    #: None (unset): the grammar text is kept at levels full and up, whose steps make a proof
    #: `vllm-audit replay` re-runs; True: at every level; False: never.
    include_grammar: bool | None = None
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
    #: The digest cache file (VLLM_AUDIT_DIGEST_CACHE); "" when none.
    digest_cache: str = ""

    def keeps_grammar(self, level: int) -> bool:
        """Whether a GrammarCompiled event at `level` (the one the agent pushed) carries the
        grammar's text (cut at grammar_max_bytes)."""
        if self.include_grammar is not None:
            return self.include_grammar
        return level >= Level.FULL

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
        preset = read_preset(env)
        return cls(
            enabled=enabled_in_env(env),
            agent_address=read_address(env, ENV_AGENT_ADDRESS, DEFAULT_AGENT_ADDRESS),
            level=read_level(env, preset.level),
            buffer_events=read_positive_int(env, ENV_BUFFER_EVENTS, 65536),
            unacked_bytes=read_positive_int(env, ENV_UNACKED_BYTES, 64 * 1024 * 1024),
            batch_events=read_positive_int(env, ENV_BATCH_EVENTS, 2048),
            flush_ms=read_positive_int(env, ENV_FLUSH_MS, 20),
            capture_prompt=read_policy(env, ENV_CAPTURE_PROMPT, "hmac"),
            capture_output=read_policy(env, ENV_CAPTURE_OUTPUT, "hmac"),
            capture_client_ip=read_policy(env, ENV_CAPTURE_CLIENT_IP, "hmac"),
            hmac_key=key.encode() if key else None,
            signals=read_bool(env, ENV_SIGNALS, True),
            signals_max_chars=read_positive_int(env, ENV_SIGNALS_MAX_CHARS,
                                                DEFAULT_SIGNALS_MAX_CHARS),
            tenant_header=read_header(env, ENV_TENANT_HEADER, "x-tenant-id"),
            user_header=read_header(env, ENV_USER_HEADER, ""),
            trusted_proxies=read_trusted_proxies(env),
            identities=read_identities(env),
            # A preset without the grammar (minimal) leaves it to the level, as unset does.
            include_grammar=(read_bool(env, ENV_INCLUDE_GRAMMAR, False)
                             if env.get(ENV_INCLUDE_GRAMMAR) else preset.include_grammar or None),
            grammar_max_bytes=read_positive_int(env, ENV_GRAMMAR_MAX_BYTES, 64 * 1024),
            allowed_set_max_bytes=read_positive_int(env, ENV_ALLOWED_SET_MAX_BYTES,
                                                    DEFAULT_ALLOWED_SET_MAX_BYTES),
            allowed_sets_trail_max_bytes=read_positive_int(env, ENV_ALLOWED_SETS_TRAIL_MAX_BYTES,
                                                           DEFAULT_ALLOWED_SETS_TRAIL_MAX_BYTES),
            allowed_sets_backlog_bytes=read_positive_int(env, ENV_ALLOWED_SETS_BACKLOG_BYTES,
                                                         DEFAULT_ALLOWED_SETS_BACKLOG_BYTES),
            async_requested=read_bool(env, ENV_ASYNC, True),
            persist=read_bool(env, ENV_PERSIST, True) if env.get(ENV_PERSIST) else None,
            log_dir=env.get(ENV_LOG_DIR) or "",
            in_response=read_bool(env, ENV_IN_RESPONSE, preset.in_response),
            response_level=read_choice(env, ENV_RESPONSE_LEVEL, RESPONSE_LEVELS,
                                       preset.response_level),
            max_trails=read_positive_int(env, ENV_MAX_TRAILS, 1) if env.get(ENV_MAX_TRAILS) else None,
            query_address=read_query_address(env),
            query_token=(env.get(ENV_QUERY_TOKEN) or "").strip(),
            response_timeout_ms=read_positive_int(env, ENV_RESPONSE_TIMEOUT_MS, 500),
            max_batch_bytes=read_positive_int(env, ENV_MAX_BATCH_BYTES, DEFAULT_MAX_BATCH_BYTES),
            max_message_bytes=read_positive_int(env, ENV_MAX_MESSAGE_BYTES, DEFAULT_MAX_MESSAGE_BYTES),
            ack_timeout_ms=read_positive_int(env, ENV_ACK_TIMEOUT_MS, DEFAULT_ACK_TIMEOUT_MS),
            self_timing=read_bool(env, ENV_SELF_TIMING, False),
            digest_cache=read_digest_cache(env),
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
