"""Patch target: vLLM's `StatLoggerManager` — the stat logger for the offline `LLM`.

`vllm serve` loads `AuditStatLogger` from the `vllm.stat_logger_plugins` entry point; the
offline `LLM` loads no stat-logger plugins, so `StatLoggerManager.__init__` is wrapped to add
ours to `custom_stat_loggers` (once: a list already naming it is left alone).
"""

from __future__ import annotations

import functools
from typing import Any

from vllm.v1.metrics.loggers import StatLoggerManager

from vllm_hooks.errors import ERRORS
from vllm_hooks.vllm.stat_logger import AuditStatLogger


def patch_stat_logger_manager() -> None:
    original = StatLoggerManager.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            custom = kwargs.get("custom_stat_loggers")
            if len(args) < 3:  # custom_stat_loggers is the third positional parameter
                factories = list(custom or [])
                if AuditStatLogger not in factories:
                    factories.append(AuditStatLogger)
                kwargs["custom_stat_loggers"] = factories
        except Exception as exc:
            # The site name predates this module; the agent's error counters are keyed on it.
            ERRORS.record("adapter.stat_logger_manager", exc)
        original(self, *args, **kwargs)

    StatLoggerManager.__init__ = __init__
