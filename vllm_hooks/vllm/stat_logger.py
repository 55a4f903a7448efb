"""Engine stats from vLLM's stat-logger interface, throttled to a few snapshots per second.

`record()` runs in vLLM's output handler: an exception there kills every in-flight request,
so it never raises. Its signature changed three times across vLLM versions: accept anything.
"""

from __future__ import annotations

import time
from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase

from vllm_hooks.config.levels import Level
from vllm_hooks.config.settings import settings
from vllm_hooks.errors import ERRORS
from vllm_hooks.events import raw_events as raw
from vllm_hooks.runtime import HookRuntime, get_runtime

_SUMMARY = int(Level.SUMMARY)
#: Seconds between snapshots; counters accumulate in between, so nothing is lost by throttling.
SNAPSHOT_INTERVAL_S = 0.25
#: EngineStats fields summed from the iteration stats (seconds, then counts).
_LATENCY_FIELDS = ("ttft_seconds_sum", "inter_token_latency_seconds_sum", "tpot_seconds_sum",
                   "queue_time_seconds_sum", "e2e_latency_seconds_sum",
                   "prefill_time_seconds_sum", "decode_time_seconds_sum")
_COUNT_FIELDS = ("ttft_count", "inter_token_latency_count", "tpot_count", "finished_requests",
                 "cached_prompt_tokens")


class AuditStatLogger(StatLoggerBase):
    def __init__(self, vllm_config: Any = None, engine_index: int = 0, *args: Any, **kwargs: Any):
        self.engine_index = engine_index
        self._rt: HookRuntime | None = None
        try:
            if settings().enabled:
                self._rt = get_runtime("frontend")
                name = vllm_config.model_config.served_model_name or vllm_config.model_config.model
                self._rt.sender.model = str(name[0] if isinstance(name, (list, tuple)) else name)
                timer = self._rt.timer
                if timer is not None:
                    # Self-timing: this instance's record() is timed (an instance attribute
                    # shadows the method; an untimed logger never sees it).
                    # the ignore[method-assign] below: timed record() on this instance only
                    self.record = timer.stat_logger_call(self.record)  # type: ignore[method-assign]
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
        # Latency sums (seconds) and counts, cumulative like the token counters.
        self._lat: dict[str, float] = dict.fromkeys(_LATENCY_FIELDS, 0.0)
        self._counts: dict[str, int] = dict.fromkeys(_COUNT_FIELDS, 0)

    def record(self, scheduler_stats: Any = None, iteration_stats: Any = None,
               *args: Any, **kwargs: Any) -> None:
        rt = self._rt
        if rt is None or rt.level < _SUMMARY:
            return
        try:
            # vLLM >= 0.11 passes the engine index; a per-engine logger also knows its own.
            engine_idx = kwargs.get("engine_idx")
            if isinstance(engine_idx, int):
                self.engine_index = engine_idx
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
            self._accumulate_latencies(iteration_stats)
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

    def _accumulate_latencies(self, it: Any) -> None:
        """TTFT and inter-token latencies of this iteration, and the timings of the requests
        that finished in it (vllm/v1/metrics/stats.py: IterationStats, FinishedRequestStats)."""
        lat, counts = self._lat, self._counts
        ttfts = getattr(it, "time_to_first_tokens_iter", ()) or ()
        lat["ttft_seconds_sum"] += float(sum(ttfts))
        counts["ttft_count"] += len(ttfts)
        itls = getattr(it, "inter_token_latencies_iter", ()) or ()
        lat["inter_token_latency_seconds_sum"] += float(sum(itls))
        counts["inter_token_latency_count"] += len(itls)
        for done in getattr(it, "finished_requests", ()) or ():
            counts["finished_requests"] += 1
            lat["queue_time_seconds_sum"] += float(getattr(done, "queued_time", 0.0))
            lat["e2e_latency_seconds_sum"] += float(getattr(done, "e2e_latency", 0.0))
            lat["prefill_time_seconds_sum"] += float(getattr(done, "prefill_time", 0.0))
            lat["decode_time_seconds_sum"] += float(getattr(done, "decode_time", 0.0))
            counts["cached_prompt_tokens"] += int(getattr(done, "num_cached_tokens", 0) or 0)
            # vLLM's mean time per output token is 0 for one token: not a TPOT sample.
            if getattr(done, "num_generation_tokens", 0) > 1:
                lat["tpot_seconds_sum"] += float(getattr(done, "mean_time_per_output_token", 0.0))
                counts["tpot_count"] += 1

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
            **self._lat,
            **self._counts,
        }

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass
