"""The stat logger over vLLM's own stats classes: latencies summed per engine index into
EngineStats (the proto accepts every field it sends), and garbage never raises into vLLM."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from vllm_audit.v1 import events_pb2 as pb
from vllm_hooks.config.levels import Level
from vllm_hooks.errors import ERRORS
from vllm_hooks.events import raw_events as raw
from vllm_hooks.transport.buffer import EventBuffer

stats = pytest.importorskip("vllm.v1.metrics.stats")
from vllm_hooks.vllm.stat_logger import AuditStatLogger  # noqa: E402 - needs vLLM


def logger_with_buffer(engine_index: int = 0) -> tuple[AuditStatLogger, EventBuffer]:
    logger = AuditStatLogger(None, engine_index)
    buffer = EventBuffer(100)
    logger._rt = SimpleNamespace(level=int(Level.SUMMARY), buffer=buffer)  # type: ignore[assignment]
    return logger, buffer


def finished(tokens: int, tpot: float) -> object:
    return stats.FinishedRequestStats(
        finish_reason=None, e2e_latency=2.0, num_prompt_tokens=3, num_generation_tokens=tokens,
        queued_time=0.25, prefill_time=0.5, decode_time=1.25, mean_time_per_output_token=tpot,
        num_cached_tokens=2)


def test_latencies_are_summed_per_engine_and_fit_the_proto() -> None:
    logger, buffer = logger_with_buffer(engine_index=0)
    it = stats.IterationStats()
    it.time_to_first_tokens_iter = [0.5, 1.5]
    it.inter_token_latencies_iter = [0.1, 0.2, 0.3]
    it.finished_requests = [finished(5, 0.2), finished(1, 0.0)]
    sched = stats.SchedulerStats(num_running_reqs=0, num_waiting_reqs=0, kv_cache_usage=0.5)
    logger.record(sched, it, None, engine_idx=1)  # the idle step is always sent
    (event,) = buffer.drain(10)
    assert event[0] == raw.STATS
    s = pb.EngineStats(**event[3])  # every key is a proto field
    assert s.engine_index == 1
    assert (s.ttft_seconds_sum, s.ttft_count) == (2.0, 2)
    assert s.inter_token_latency_seconds_sum == pytest.approx(0.6)
    assert s.inter_token_latency_count == 3
    assert (s.tpot_seconds_sum, s.tpot_count) == (0.2, 1)  # one token has no TPOT
    assert s.finished_requests == 2 and s.queue_time_seconds_sum == 0.5
    assert (s.e2e_latency_seconds_sum, s.prefill_time_seconds_sum, s.decode_time_seconds_sum) \
        == (4.0, 1.0, 2.5)
    assert s.cached_prompt_tokens == 4


def test_record_never_raises_on_what_it_does_not_understand(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ERRORS, "_counts", Counter())  # restored after the test
    logger, _ = logger_with_buffer()
    bad = SimpleNamespace(time_to_first_tokens_iter=["not a number"])
    logger.record(object(), bad)
    logger.record(None, None, "extra", engine_idx="x")
    assert ERRORS.snapshot() == {"stat_logger.record": 1}
