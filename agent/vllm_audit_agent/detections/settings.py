"""The detection thresholds: one table, defaults here, overridden by a file
(`--detection-rules`, YAML, JSON or TOML by its suffix):

    max_keys: 10000            # keys (users, addresses, …) each rule tracks per subject kind
    rules:
      high_call_rate: {window_seconds: 10, max_calls: 50}
      output_length_anomaly: {enabled: false}

A key a rule does not know fails the start (a typo must not silently keep a default).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the ignore[import-untyped] below: PyYAML ships no stubs here (safe_load only is used)
import yaml  # type: ignore[import-untyped]

from vllm_audit_agent.detections.finding import SEVERITIES, SUBJECT_KINDS


@dataclass(frozen=True)
class RuleSettings:
    """What every rule has: on or off, the severity of its findings, and the cool-down: one
    finding per (rule, subject) per `cooldown_seconds`, not one per request."""
    enabled: bool = True
    severity: str = "medium"
    cooldown_seconds: float = 300.0
    subjects: tuple[str, ...] = ()


@dataclass(frozen=True)
class CallRate(RuleSettings):
    """More than `max_calls` calls of one subject within `window_seconds` (sliding)."""
    subjects: tuple[str, ...] = ("user", "api_key", "client_ip")
    window_seconds: float = 10.0
    max_calls: int = 50


@dataclass(frozen=True)
class Baseline(RuleSettings):
    """A value far above the subject's robust baseline (median and MAD of its last `history`
    values, after `warmup` of them): above median + mad_factor x max(1.4826 MAD, min_spread),
    at least min_ratio x the median and at least `min_value`."""
    history: int = 200
    warmup: int = 20
    mad_factor: float = 6.0
    min_ratio: float = 4.0
    min_spread: float = 8.0
    min_value: float = 256.0


@dataclass(frozen=True)
class OutputLength(Baseline):
    """A request's output tokens against its user's and its model's baseline."""
    severity: str = "high"
    subjects: tuple[str, ...] = ("user", "model")


@dataclass(frozen=True)
class TokenSpend(Baseline):
    """A tenant's tokens (prompt + output) in a `bucket_seconds` bucket against its earlier
    buckets (empty ones count as 0)."""
    subjects: tuple[str, ...] = ("tenant",)
    bucket_seconds: float = 60.0
    history: int = 60
    warmup: int = 5
    min_spread: float = 1000.0
    min_value: float = 20000.0


@dataclass(frozen=True)
class AuthFailures(RuleSettings):
    """More than `max_failures` refused credentials (HTTP 401/403, the agent's own API's
    refusals) from one subject within `window_seconds`."""
    severity: str = "high"
    subjects: tuple[str, ...] = ("client_ip", "api_key")
    window_seconds: float = 60.0
    max_failures: int = 20


@dataclass(frozen=True)
class KeyAddresses(RuleSettings):
    """One API key used from more than `max_addresses` client addresses within
    `window_seconds`."""
    severity: str = "high"
    subjects: tuple[str, ...] = ("api_key",)
    window_seconds: float = 600.0
    max_addresses: int = 5


@dataclass(frozen=True)
class Refusals(RuleSettings):
    """More than `max_refusals` refused requests (status >= 400 but 401/403, an error, or a
    finish reason in `finish_reasons`) of one model or tenant within `window_seconds`."""
    subjects: tuple[str, ...] = ("model", "tenant")
    window_seconds: float = 60.0
    max_refusals: int = 20
    finish_reasons: tuple[str, ...] = ("content_filter", "error")


@dataclass(frozen=True)
class FlaggedContent(RuleSettings):
    """At least `min_flagged` requests with a content signal (the record's content_signals)
    from one subject within `window_seconds`, and at least `max_rate` of its requests there."""
    severity: str = "high"
    subjects: tuple[str, ...] = ("user", "tenant")
    window_seconds: float = 300.0
    min_flagged: int = 5
    max_rate: float = 0.3


_KINDS: dict[str, type[RuleSettings]] = {
    "high_call_rate": CallRate, "output_length_anomaly": OutputLength,
    "auth_failure_burst": AuthFailures, "api_key_many_addresses": KeyAddresses,
    "token_spend_spike": TokenSpend, "repeated_refusals": Refusals,
    "flagged_content_rate": FlaggedContent,
}


def _defaults() -> dict[str, RuleSettings]:
    return {name: kind() for name, kind in _KINDS.items()}


@dataclass(frozen=True)
class DetectionSettings:
    #: Keys each rule tracks per subject kind (least recently seen evicted, counted).
    max_keys: int = 10_000
    rules: dict[str, RuleSettings] = field(default_factory=_defaults)


def _rule(name: str, values: Any, where: str) -> RuleSettings:
    kind = _KINDS.get(name)
    if kind is None:
        raise ValueError(f"{where}: unknown rule {name!r}; the rules are {', '.join(_KINDS)}")
    if not isinstance(values, dict):
        raise ValueError(f"{where}: rules.{name} must be a mapping of setting -> value")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: rules.{name} has no setting {', '.join(unknown)} "
                         f"(it has {', '.join(fields)})")
    default = kind()
    typed: dict[str, Any] = {}
    for key, value in values.items():
        current = getattr(default, key)
        if isinstance(current, tuple):
            if not isinstance(value, list | tuple):
                raise ValueError(f"{where}: rules.{name}.{key} must be a list")
            typed[key] = tuple(str(v) for v in value)
        elif isinstance(current, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{where}: rules.{name}.{key} must be true or false")
            typed[key] = value
        elif isinstance(current, int | float):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{where}: rules.{name}.{key} must be a number >= 0")
            typed[key] = type(current)(value)
        else:
            typed[key] = str(value)
    settings = dataclasses.replace(default, **typed)
    _check(name, settings, where)
    return settings


def _check(name: str, settings: RuleSettings, where: str) -> None:
    if settings.severity not in SEVERITIES:
        raise ValueError(f"{where}: rules.{name}.severity {settings.severity!r} is not one of "
                         f"{', '.join(SEVERITIES)}")
    # Distinct addresses per address would always be one.
    allowed = tuple(k for k in SUBJECT_KINDS
                    if k != "client_ip" or name != "api_key_many_addresses")
    wrong = [s for s in settings.subjects if s not in allowed]
    if wrong:
        raise ValueError(f"{where}: rules.{name}.subjects {wrong} not among {', '.join(allowed)}")
    for key in ("window_seconds", "bucket_seconds", "history", "warmup"):
        if getattr(settings, key, 1) <= 0:
            raise ValueError(f"{where}: rules.{name}.{key} must be > 0")


def _read(path: Path) -> Any:
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    if path.suffix == ".toml":
        if sys.version_info < (3, 11):
            raise ValueError(f"{path}: TOML needs Python 3.11; use YAML or JSON")
        import tomllib

        return tomllib.loads(text)
    return yaml.safe_load(text)


def load_settings(path: Path | None) -> DetectionSettings:
    """The settings in `path` over the defaults (the defaults without one). Raises ValueError
    naming what is wrong."""
    if path is None:
        return DetectionSettings()
    data = _read(path) or {}
    where = str(path)
    if not isinstance(data, dict) or set(data) - {"max_keys", "rules"}:
        raise ValueError(f"{where}: expected the keys max_keys and rules")
    rules = _defaults()
    given = data.get("rules") or {}
    if not isinstance(given, dict):
        raise ValueError(f"{where}: rules must be a mapping of rule -> settings")
    for name, values in given.items():
        rules[str(name)] = _rule(str(name), values or {}, where)
    max_keys = data.get("max_keys", DetectionSettings.max_keys)
    if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
        raise ValueError(f"{where}: max_keys must be an integer >= 1")
    return DetectionSettings(max_keys, rules)
