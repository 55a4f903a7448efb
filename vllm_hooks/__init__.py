"""vllm-audit hook: runs inside vLLM's processes and streams audit events to the agent.

Entry points (pyproject.toml):
- `vllm.general_plugins`: `vllm_hooks:register` — idempotent, never raises.
- `vllm.stat_logger_plugins`: `vllm_hooks.vllm.stat_logger:AuditStatLogger`.
- ASGI middleware for `vllm serve`: `--middleware vllm_hooks.middleware.AuditMiddleware`.

Disabled unless `VLLM_AUDIT_ENABLED=true` (or `VLLM_STRUCTURED_OUTPUT_AUDIT=true`): then
`register()` patches nothing and the hook costs nothing on the engine's path.

Public API: `vllm_hooks.record_custom_event` (see `vllm_hooks.api`), imported on first use so
a disabled hook still loads nothing.

Fail closed at start-up, where a user can still act on it: when enabled, an invalid setting
stops vLLM with a message naming the variable (unless `VLLM_AUDIT_FAIL_OPEN=true`), and
`VLLM_AUDIT_REQUIRED=true` also stops it when the agent cannot be reached. These are the only
exceptions `register()` lets through; after start-up the hook never raises into vLLM.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from vllm_hooks.errors import ERRORS

__all__ = ["record_custom_event", "register"]

_lock = threading.Lock()
_registered = False


class AuditStartupError(RuntimeError):
    """The audit cannot run as configured and the user asked for it to be enforced."""


def register() -> None:
    """vLLM general plugin. Safe to call any number of times, in any process."""
    global _registered
    if _registered:
        return
    try:
        with _lock:
            if _registered:
                return
            _registered = True
            # Only the on switch is read while disabled: no other settings, no gRPC, no vLLM.
            from vllm_hooks.config.start_policy import enabled_in_env

            if not enabled_in_env():
                return
            from vllm_hooks.config.instance_key import instance_key

            # Now, while vLLM parses its arguments: the engine it starts later inherits it.
            instance_key()
            from vllm_hooks.config.env_vars import ENV_FAIL_OPEN
            from vllm_hooks.config.settings import settings
            from vllm_hooks.config.start_policy import start_policy

            try:
                _, required, wait = start_policy()
                configured = settings()
            except ValueError as exc:
                if fail_open_in_env():
                    raise
                raise AuditStartupError(
                    f"vllm-audit: {exc}. Fix the setting, or set {ENV_FAIL_OPEN}=true to let "
                    "vLLM serve unaudited") from None
            for note in configured.startup_notes():
                logging.getLogger("vllm_hooks").warning("vllm-audit: %s", note)
            if required:
                _require_agent(configured.agent_address, wait)
            # Imported only when enabled: the adapter imports vLLM internals.
            from vllm_hooks.vllm.adapter import install

            install()
    except AuditStartupError:
        raise  # fail closed: vLLM stops at start-up with the reason
    except Exception as exc:
        # Strict mode (tests) re-raises from record(); vLLM itself must never see it.
        with contextlib.suppress(Exception):
            ERRORS.record("register", exc)


def fail_open_in_env() -> bool:
    from vllm_hooks.config.start_policy import start_policy

    try:
        return start_policy()[0]
    except ValueError:
        return False


def _require_agent(address: str, wait: float) -> None:
    """Connects a plain socket (no gRPC: register() runs before vLLM forks) until the agent
    answers or `wait` seconds passed."""
    import socket
    import time

    from vllm_hooks.config.env_vars import ENV_REQUIRED

    target = address[len("unix:"):] if address.startswith("unix:") else address
    deadline = time.monotonic() + wait
    while True:
        try:
            if target.startswith("/"):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(1.0)
                    s.connect(target)
            else:
                host, _, port = target.rpartition(":")
                socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
            return
        except (OSError, ValueError) as exc:
            if time.monotonic() >= deadline:
                raise AuditStartupError(
                    f"vllm-audit: {ENV_REQUIRED}=true and the agent at {address!r} cannot be "
                    f"reached ({exc}); start the agent first, or unset {ENV_REQUIRED}") from None
        time.sleep(0.2)


def __getattr__(name: str) -> Any:
    # Lazy: the API module imports the runtime (and gRPC), which a disabled hook never loads.
    if name == "record_custom_event":
        from vllm_hooks.api import record_custom_event

        return record_custom_event
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
