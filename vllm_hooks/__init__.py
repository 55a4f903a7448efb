"""vllm-audit hook: runs inside vLLM's processes and streams audit events to the agent.

Entry points (pyproject.toml):
- `vllm.general_plugins`: `vllm_hooks:register` — idempotent, never raises.
- `vllm.stat_logger_plugins`: `vllm_hooks.stat_logger:AuditStatLogger`.
- ASGI middleware for `vllm serve`: `--middleware vllm_hooks.middleware.AuditMiddleware`.

Disabled unless `VLLM_AUDIT_ENABLED=true` (or `VLLM_STRUCTURED_OUTPUT_AUDIT=true`): then
`register()` patches nothing and the hook costs nothing on the engine's path.
"""

from __future__ import annotations

import contextlib
import threading

from .errors import ERRORS

__all__ = ["register"]

_lock = threading.Lock()
_registered = False


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
            # Only the settings are read while disabled: no gRPC, no vLLM internals.
            from .settings import settings

            if not settings().enabled:
                return
            # Imported only when enabled: the adapter imports vLLM internals.
            from .adapter import install

            install()
    except Exception as exc:
        # Strict mode (tests) re-raises from record(); vLLM itself must never see it.
        with contextlib.suppress(Exception):
            ERRORS.record("register", exc)
