"""vllm-audit hook: runs inside vLLM's processes and streams audit events to the agent.

Entry points (pyproject.toml):
- `vllm.general_plugins`: `vllm_hooks:register` — idempotent, never raises.
- `vllm.stat_logger_plugins`: `vllm_hooks.stat_logger:AuditStatLogger`.
- ASGI middleware for `vllm serve`: `--middleware vllm_hooks.middleware.AuditMiddleware`.

Disabled unless `VLLM_AUDIT_ENABLED=true` (or `VLLM_STRUCTURED_OUTPUT_AUDIT=true`): then
`register()` patches nothing and the hook costs nothing on the engine's path.

Public API: `vllm_hooks.record_custom_event` (see `vllm_hooks.api`), imported on first use so
a disabled hook still loads nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from .errors import ERRORS

__all__ = ["record_custom_event", "register"]

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

            current = settings()
            if not current.enabled:
                return
            for note in current.startup_notes():
                logging.getLogger("vllm_hooks").warning("vllm-audit: %s", note)
            # Imported only when enabled: the adapter imports vLLM internals.
            from .adapter import install

            install()
    except Exception as exc:
        # Strict mode (tests) re-raises from record(); vLLM itself must never see it.
        with contextlib.suppress(Exception):
            ERRORS.record("register", exc)


def __getattr__(name: str) -> Any:
    # Lazy: the API module imports the runtime (and gRPC), which a disabled hook never loads.
    if name == "record_custom_event":
        from .api import record_custom_event

        return record_custom_event
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
