"""Engine stats from vLLM's stat-logger interface, throttled to a few snapshots per second.

`record()` runs in vLLM's output handler: an exception there kills every in-flight request,
so it never raises. Its signature changed three times across vLLM versions: accept anything.
"""

from __future__ import annotations

import time
from typing import Any

from . import raw_events as raw
from .adapter import StatLoggerBase
from .errors import ERRORS
from .runtime import HookRuntime, get_runtime
from .settings import Level, settings

_SUMMARY = int(Level.SUMMARY)
#: Seconds between snapshots; counters accumulate in between, so nothing is lost by throttling.
SNAPSHOT_INTERVAL_S = 0.25


class AuditStatLogger(StatLoggerBase):  # type: ignore[misc]
    def __init__(self, vllm_config: Any = None, engine_index: int = 0, *args: Any, **kwargs: Any):
        self.engine_index = engine_index
        self._rt: HookRuntime | None = None
        try:
            if settings().enabled:
                self._rt = get_runtime("frontend")
                name = vllm_config.model_config.served_model_name or vllm_config.model_config.model
                self._rt.sender.model = str(name[0] if isinstance(name, (list, tuple)) else name)
        except Exception as exc:
            ERRORS.record("stat_logger.init", exc)
        self._last_emit = 0.0
        self._was_idle = False
        self._latest: Any = None
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._preempted = 0
        self._prefix_queries = 0
        self._prefix_hits = 0
        self._spec_drafts = 0
        self._spec_draft_tokens = 0
        self._spec_accepted = 0

    def record(self, scheduler_stats: Any = None, iteration_stats: Any = None,
               *args: Any, **kwargs: Any) -> None:
        rt = self._rt
        if rt is None or rt.level < _SUMMARY:
            return
        try:
            self._accumulate(scheduler_stats, iteration_stats)
            latest = self._latest
            if latest is None:
                return
            now = time.monotonic()
            # vLLM calls record() only while the engine has work: the step that empties it is
            # the last call before a quiet spell, so it is always sent, or the agent would
            # show a busy engine and stale token counters until the next request.
            idle = latest.num_running_reqs == 0 and latest.num_waiting_reqs == 0
            first_idle = idle and not self._was_idle
            self._was_idle = idle
            if first_idle or now - self._last_emit >= SNAPSHOT_INTERVAL_S:
                self._last_emit = now
                rt.buffer.offer((raw.STATS, time.time_ns(), "", self._snapshot()))
        except Exception as exc:
            ERRORS.record("stat_logger.record", exc)

    def _accumulate(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        if iteration_stats is not None:
            self._prompt_tokens += getattr(iteration_stats, "num_prompt_tokens", 0)
            self._generation_tokens += getattr(iteration_stats, "num_generation_tokens", 0)
            self._preempted += getattr(iteration_stats, "num_preempted_reqs", 0)
        if scheduler_stats is not None:
            self._latest = scheduler_stats
            prefix = getattr(scheduler_stats, "prefix_cache_stats", None)
            if prefix is not None:
                self._prefix_queries += getattr(prefix, "queries", 0)
                self._prefix_hits += getattr(prefix, "hits", 0)
            spec = getattr(scheduler_stats, "spec_decoding_stats", None)
            if spec is not None:
                self._spec_drafts += spec.num_drafts
                self._spec_draft_tokens += spec.num_draft_tokens
                self._spec_accepted += spec.num_accepted_tokens

    def _snapshot(self) -> dict[str, Any]:
        latest = self._latest
        return {
            "engine_index": self.engine_index,
            "num_running_reqs": latest.num_running_reqs,
            "num_waiting_reqs": latest.num_waiting_reqs,
            "kv_cache_usage": float(latest.kv_cache_usage),
            "prefix_cache_queries": self._prefix_queries,
            "prefix_cache_hits": self._prefix_hits,
            "prompt_tokens": self._prompt_tokens,
            "generation_tokens": self._generation_tokens,
            "num_preempted_reqs": self._preempted,
            "spec_decode_num_drafts": self._spec_drafts,
            "spec_decode_num_draft_tokens": self._spec_draft_tokens,
            "spec_decode_num_accepted_tokens": self._spec_accepted,
        }

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass
