"""Environment text to typed values: one reader per kind of variable, each error a ValueError
naming the variable and the value it had.

`settings.HookSettings.from_env` is their caller; the parsers of the two variables that name
larger inputs (`client_address` for trusted proxies, `identity_file` for API-key identities)
are imported only when those variables are set.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vllm_hooks.config.env_vars import (
    CAPTURE_POLICIES,
    DEFAULT_QUERY_ADDRESS,
    ENV_DIGEST_CACHE,
    ENV_IDENTITY_FILE,
    ENV_LEVEL,
    ENV_PRESET,
    ENV_QUERY_ADDRESS,
    ENV_QUERY_TOKEN,
    ENV_RECORD_ALLOWED_TOKENS,
    ENV_RECORD_FULL_EVENTS,
    ENV_TRUSTED_PROXIES,
)
from vllm_hooks.config.levels import PRESETS, Level, Preset

if TYPE_CHECKING:
    from vllm_hooks.config.client_address import Network
    from vllm_hooks.config.identity_file import KeyIdentity


def read_bool(env: dict[str, str] | os._Environ[str], name: str, default: bool) -> bool:
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


def read_preset(env: dict[str, str] | os._Environ[str]) -> Preset:
    name = (env.get(ENV_PRESET) or "minimal").strip().lower()
    if name not in PRESETS:
        raise ValueError(f"{ENV_PRESET}={name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def read_level(env: dict[str, str] | os._Environ[str], default: Level = Level.SUMMARY) -> Level:
    """VLLM_AUDIT_LEVEL, or the level the seed's RECORD_* variables imply. Both set and the
    explicit level below what a RECORD_* variable asks for is a contradiction, not a guess."""
    implied, because = default, ""
    for name, level in ((ENV_RECORD_FULL_EVENTS, Level.FULL),
                        (ENV_RECORD_ALLOWED_TOKENS, Level.FULL_WITH_ALLOWED_SETS)):
        if read_bool(env, name, False):
            because = name
            implied = max(implied, level)
    explicit = env.get(ENV_LEVEL)
    if not explicit:
        return implied
    try:
        level = Level.parse(explicit)
    except ValueError as exc:
        # Level.parse is also the agent's pushed-level reader: the variable is named here.
        raise ValueError(f"{ENV_LEVEL}={explicit!r}: {exc}") from None
    if because and level < implied:
        raise ValueError(
            f"{because}=true needs level {implied.name.lower().replace('_', '-')} but "
            f"{ENV_LEVEL}={explicit!r}; unset one of them"
        )
    return level


def read_choice(env: dict[str, str] | os._Environ[str], name: str, choices: tuple[str, ...],
                default: str) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {', '.join(choices)}")
    return value


def read_positive_int(env: dict[str, str] | os._Environ[str], name: str, default: int) -> int:
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


def read_address(env: dict[str, str] | os._Environ[str], name: str, default: str,
                 socket_path: bool = True) -> str:
    """A gRPC address: HOST:PORT, or (`socket_path`) an absolute Unix socket path or unix:PATH;
    also any target gRPC names by scheme (dns:, ipv4:, ipv6:). Anything else could only fail
    to connect, retried forever while vLLM serves unaudited, so it is refused here."""
    raw = env.get(name)
    value = default if raw is None or not raw.strip() else raw.strip()
    if value.startswith(("dns:", "ipv4:", "ipv6:")) or (
            socket_path and (value.startswith("unix:") or value.startswith("/"))):
        return value
    host, sep, port = value.rpartition(":")
    if sep and host.strip("[]") and port.isdigit() and 0 < int(port) < 65536:
        return value
    expected = "an absolute socket path, unix:PATH or HOST:PORT" if socket_path else "HOST:PORT"
    raise ValueError(f"{name}={raw!r} is not an address; expected {expected}")


def read_query_address(env: dict[str, str] | os._Environ[str]) -> str:
    """Where the response audit reads from when it does not read back over the ingest socket:
    the agent's query API, which answers only with a token, so an address alone is refused."""
    address = read_address(env, ENV_QUERY_ADDRESS, DEFAULT_QUERY_ADDRESS, socket_path=False)
    if env.get(ENV_QUERY_ADDRESS) and not (env.get(ENV_QUERY_TOKEN) or "").strip():
        raise ValueError(f"{ENV_QUERY_ADDRESS}={env.get(ENV_QUERY_ADDRESS)!r} needs "
                         f"{ENV_QUERY_TOKEN} (the query API answers only with a token); or "
                         f"unset it: the response audit reads back over the ingest socket")
    return address


def read_trusted_proxies(env: dict[str, str] | os._Environ[str]) -> tuple[Network, ...]:
    text = env.get(ENV_TRUSTED_PROXIES)
    if not text:
        return ()  # the usual case imports nothing more: disabled must cost nothing
    from vllm_hooks.config.client_address import parse_networks

    return parse_networks(ENV_TRUSTED_PROXIES, text)


def read_identities(env: dict[str, str] | os._Environ[str]) -> dict[str, KeyIdentity]:
    path = (env.get(ENV_IDENTITY_FILE) or "").strip()
    if not path:
        return {}  # nothing more is imported without a mapping
    from vllm_hooks.config.identity_file import load_identity_file

    return load_identity_file(ENV_IDENTITY_FILE, path)


#: RFC 9110 token characters: what a header name may be made of.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def read_header(env: dict[str, str] | os._Environ[str], name: str, default: str) -> str:
    raw = env.get(name)
    value = (default if raw is None or not raw.strip() else raw).strip().lower()
    if not set(value) <= _TOKEN:
        raise ValueError(f"{name}={raw!r} is not an HTTP header name")
    return value


def read_policy(env: dict[str, str] | os._Environ[str], name: str, default: str) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in CAPTURE_POLICIES:
        raise ValueError(f"{name}={value!r}; expected one of {', '.join(CAPTURE_POLICIES)}")
    return value


def read_digest_cache(env: dict[str, str] | os._Environ[str]) -> str:
    """The digest cache file: unset, ~/.cache/vllm-audit/digests.json; "none", no cache. A
    relative path is refused (vLLM's working directory is nobody's choice)."""
    raw = (env.get(ENV_DIGEST_CACHE) or "").strip()
    if raw.lower() == "none":
        return ""
    if not raw:
        return os.path.join(os.path.expanduser("~"), ".cache", "vllm-audit", "digests.json")
    if not os.path.isabs(raw):
        raise ValueError(f"{ENV_DIGEST_CACHE}={raw!r} must be an absolute path, or none")
    return raw
