"""The API-key → user/tenant mapping file (`VLLM_AUDIT_IDENTITY_FILE`), read once at start-up.

The file holds SHA-256 hashes of the keys, never the keys: it can be mounted from a ConfigMap
and read by anyone without handing out a credential. YAML or JSON (by suffix: `.json` is
JSON, anything else YAML, which also reads JSON), either a list of entries or a mapping with
a `keys` list:

    keys:
      - sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        user: alice
        tenant: bank-a

Each entry needs `sha256` (64 hex digits: `printf %s "$KEY" | sha256sum`) and a `user`, a
`tenant` or both. Anything wrong is a ValueError naming the variable and the entry, which
stops vLLM at start-up under the fail-closed rules of settings.py. Imported only when the
variable is set: a hook without a mapping loads nothing more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HEX = frozenset("0123456789abcdef")
_KEYS = frozenset({"sha256", "user", "tenant"})


@dataclass(frozen=True)
class KeyIdentity:
    """Who an API key belongs to; either may be empty (then the next source is asked)."""

    user: str
    tenant: str


def load_identity_file(name: str, path: str) -> dict[str, KeyIdentity]:
    """sha256 hex of a key -> its identity. Raises ValueError starting with `name=path`."""
    where = f"{name}={path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: cannot read it ({getattr(exc, 'strerror', None) or exc})"
                         ) from None
    data = _parse(where, path, text)
    if isinstance(data, dict) and set(data) == {"keys"}:
        data = data["keys"]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{where}: expected a non-empty list of entries (or a mapping with a "
                         "'keys' list), each with sha256 and a user and/or tenant")
    table: dict[str, KeyIdentity] = {}
    for i, entry in enumerate(data):
        sha, identity = _entry(f"{where}: entry {i}", entry)
        if sha in table:
            raise ValueError(f"{where}: entry {i}: sha256 {sha[:12]}… appears twice")
        table[sha] = identity
    return table


def _parse(where: str, path: str, text: str) -> Any:
    if path.lower().endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc})") from None
    import yaml  # type: ignore[import-untyped]  # no stubs installed; vLLM requires PyYAML

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML ({exc})") from None


def _entry(where: str, entry: object) -> tuple[str, KeyIdentity]:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping with sha256 and user and/or tenant")
    unknown = set(entry) - _KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(map(str, unknown))} (expected sha256, "
                         "user, tenant; the file holds hashes of keys, never the keys)")
    sha = str(entry.get("sha256") or "").strip().lower()
    if len(sha) != 64 or not set(sha) <= _HEX:
        raise ValueError(f"{where}: sha256 must be 64 hex digits (the SHA-256 of the key)")
    user = _text(where, entry, "user")
    tenant = _text(where, entry, "tenant")
    if not user and not tenant:
        raise ValueError(f"{where}: needs a user, a tenant or both")
    return sha, KeyIdentity(user, tenant)


def _text(where: str, entry: dict[Any, Any], key: str) -> str:
    value = entry.get(key)
    if value is None:
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError(f"{where}: {key} must be a string")
    return str(value).strip()
