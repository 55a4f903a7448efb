"""What `register()` reads before anything else: the on switch and the start-up policy
(fail open, agent required, how long to wait for it).

Each reads its own variables alone, so it still answers when other settings are invalid; and it
is all a disabled hook loads of the settings (with the table, `env_vars`).
"""

from __future__ import annotations

import os

from vllm_hooks.config.env_vars import (
    ENV_ENABLED,
    ENV_FAIL_OPEN,
    ENV_REQUIRED,
    ENV_REQUIRED_WAIT,
    ENV_STRUCTURED_OUTPUT_AUDIT,
)


def _truthy(value: str | None) -> bool:
    """The switches' lenient reading: anything but a yes-word is off (never an error)."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


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
