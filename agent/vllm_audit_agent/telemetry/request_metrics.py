"""Per-request histograms (seconds, tokens), observed once per final trail, and counters of
who the served requests were attributed to and how (identity sources, vLLM's key decisions,
identity headers ignored from untrusted peers) and of the content signals the hook flagged,
counted once per trail (revision 0).

`AgentState._on_final` calls `observe` with the trail's summary fields (`Trail.fields()`,
the record's body: no protobuf message is built for it); they are counted here in plain
structures (see `_Family`) and exported by `collect` as prometheus_client metric families
through the agent's private registry.
Only finished trails are observed: a 401 or an aborted request would pull latency down.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping
from itertools import accumulate
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.model.content_signals import SIDES, SIGNAL_NAMES

_FINISHED = q.TrailState.Name(q.TRAIL_STATE_FINISHED)
#: Request latency and TTFT: 10 ms .. 10 min.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
                     120.0, 300.0, 600.0)
#: Time per output token: 1 ms .. 2.5 s.
TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5,
                  1.0, 2.5)
#: Steps per doubling of the token buckets above 16: neighbouring bounds differ by 2^(1/6)
#: (~12%), so histogram_quantile's linear interpolation inside one bucket is off by at most
#: ~6% at the median (powers of 4 put a p50 of ~320 prompt tokens at 640).
TOKEN_STEPS_PER_DOUBLING = 6


def token_buckets(top_doubling: int = 20) -> tuple[float, ...]:
    """Tokens per request: every count 1..16 (exact), then geometric steps of 2^(1/6) rounded
    to whole tokens, up to 2^20 (~1M): ~110 bounds."""
    steps = TOKEN_STEPS_PER_DOUBLING
    geometric = (round(16 * 2 ** (k / steps)) for k in range(1, steps * (top_doubling - 4) + 1))
    return tuple(float(b) for b in sorted({*range(1, 17), *geometric}))


TOKEN_BUCKETS = token_buckets()


def _names(enum: object, prefix: str) -> dict[str, str]:
    """An enum's label values by its value names (records carry enums by name): the names in
    lower case without their prefix."""
    return {v.name: v.name.removeprefix(prefix).lower()
            # the ignore[attr-defined] below: DESCRIPTOR is not in the enum stubs
            for v in enum.DESCRIPTOR.values}  # type: ignore[attr-defined]


IDENTITY_SOURCES = _names(pb.IdentitySource, "IDENTITY_SOURCE_")
AUTH_DECISIONS = _names(pb.AuthStatus, "AUTH_STATUS_")


class _Histogram:
    """One histogram series: per-bucket counts (the last is +Inf) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        self.total = 0.0


class _Family:
    """A histogram family labelled by model. Observed from the agent's loop only (one
    thread), so a bucket is a plain list cell: prometheus_client's Histogram takes a lock
    and checks its state on every observation, and with `labels()` that was a tenth of the
    agent's per-request time. Exported through prometheus_client's HistogramMetricFamily."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.buckets = name, documentation, buckets
        self.series: dict[str, _Histogram] = {}
        # the ignore[no-untyped-call] below: prometheus_client's formatter is untyped
        self._bounds = [floatToGoString(b) for b in buckets]  # type: ignore[no-untyped-call]

    def observe(self, model: str, value: float) -> None:
        series = self.series.get(model)
        if series is None:
            series = self.series[model] = _Histogram(len(self.buckets))
        # The first bucket whose upper bound is >= value (Prometheus' `le`).
        series.counts[bisect_left(self.buckets, value)] += 1
        series.total += value

    def collect(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["model"])
        for model, series in self.series.items():
            cumulative = list(accumulate(series.counts))
            family.add_metric([model], [*zip(self._bounds, cumulative[:-1], strict=True),
                                        ("+Inf", cumulative[-1])], series.total)
        return family


class RequestMetrics(Collector):
    def __init__(self) -> None:
        #: (field, source) -> served requests; decision -> served requests. Born at 0.
        self.identity: dict[tuple[str, str], int] = {
            (f, source): 0 for f in ("user", "tenant") for source in IDENTITY_SOURCES.values()}
        self.auth: dict[str, int] = dict.fromkeys(AUTH_DECISIONS.values(), 0)
        self.ignored_headers = 0
        #: (signal, side) -> served requests flagged; born at 0 for every flag and side.
        self.signals: dict[tuple[str, str], int] = {
            (flag, side): 0 for flag in SIGNAL_NAMES for side in SIDES}
        self.signals_cut = 0
        self.latency = _Family("vllm_audit_request_latency_seconds",
                               "End-to-end latency of finished requests", LATENCY_BUCKETS_S)
        self.ttft = _Family("vllm_audit_request_time_to_first_token_seconds",
                            "Time to the first response byte of finished served requests",
                            LATENCY_BUCKETS_S)
        self.tpot = _Family("vllm_audit_request_time_per_output_token_seconds",
                            "(latency - TTFT) / (completion tokens - 1) of finished requests",
                            TPOT_BUCKETS_S)
        self.prompt_tokens = _Family("vllm_audit_request_prompt_tokens",
                                     "Prompt tokens per finished request", TOKEN_BUCKETS)
        self.completion_tokens = _Family("vllm_audit_request_completion_tokens",
                                         "Completion tokens per finished request",
                                         TOKEN_BUCKETS)

    def observe(self, s: Mapping[str, Any]) -> None:
        """`s`: a final trail's summary fields, as records.message_to_dict gives them (enums
        by name)."""
        if s["revision"] == 0 and s["http_method"]:  # a served request, counted once
            identity = self.identity
            key = ("user", IDENTITY_SOURCES.get(s["user_source"], "unspecified"))
            identity[key] = identity.get(key, 0) + 1
            key = ("tenant", IDENTITY_SOURCES.get(s["tenant_source"], "unspecified"))
            identity[key] = identity.get(key, 0) + 1
            decision = AUTH_DECISIONS.get(s["auth_decision"], "unspecified")
            self.auth[decision] = self.auth.get(decision, 0) + 1
            if s["ignored_identity_headers"]:
                self.ignored_headers += 1
            self._observe_signals(s)
        if s["state"] != _FINISHED:
            return
        model = s["model"] or "unknown"
        latency_ms, ttft_ms, completion = s["latency_ms"], s["ttft_ms"], s["completion_tokens"]
        if latency_ms > 0:
            self.latency.observe(model, latency_ms / 1000.0)
        if ttft_ms > 0:
            self.ttft.observe(model, ttft_ms / 1000.0)
            # TPOT needs two tokens and a first token strictly before the end.
            if completion > 1 and latency_ms > ttft_ms:
                self.tpot.observe(model, (latency_ms - ttft_ms) / 1000.0 / (completion - 1))
        self.prompt_tokens.observe(model, s["prompt_tokens"])
        self.completion_tokens.observe(model, completion)

    def _observe_signals(self, s: Mapping[str, Any]) -> None:
        signals = s.get("content_signals")
        if not signals:
            return
        counted = self.signals
        for side in SIDES:
            for flag, n in signals.get(side, {}).items():
                if n > 0 and (flag, side) in counted:  # validation kept only known flags
                    counted[flag, side] += 1
        if s.get("content_signals_unscanned_chars"):
            self.signals_cut += 1

    def collect(self) -> Iterator[Metric]:
        for family in (self.latency, self.ttft, self.tpot, self.prompt_tokens,
                       self.completion_tokens):
            yield family.collect()
        identity = CounterMetricFamily(
            "vllm_audit_request_identity_sources",
            "Served requests by where their user or tenant came from "
            "(api_key, proxy_header, claimed, none; unspecified: older hook)",
            labels=["field", "source"])
        for (f, source), n in self.identity.items():
            identity.add_metric([f, source], n)
        yield identity
        auth = CounterMetricFamily("vllm_audit_request_auth_decisions",
                                   "Served requests by what vLLM's API-key check decided",
                                   labels=["decision"])
        for decision, n in self.auth.items():
            auth.add_metric([decision], n)
        yield auth
        flagged = CounterMetricFamily(
            "vllm_audit_request_content_signals",
            "Served requests whose prompt or output matched a content signal (the hook's "
            "rule set, counted before the capture policy), by signal and side",
            labels=["signal", "side"])
        for (flag, side), n in self.signals.items():
            flagged.add_metric([flag, side], n)
        yield flagged
        yield CounterMetricFamily(
            "vllm_audit_request_content_signals_cut",
            "Served requests with text past the hook's scan cap (VLLM_AUDIT_SIGNALS_MAX_CHARS): "
            "its middle was not scanned",
            value=self.signals_cut)
        yield CounterMetricFamily(
            "vllm_audit_request_ignored_identity_headers",
            "Served requests that carried identity headers (tenant, user, X-Forwarded-For) "
            "from a peer that is not a trusted proxy: ignored, named in the record",
            value=self.ignored_headers)
