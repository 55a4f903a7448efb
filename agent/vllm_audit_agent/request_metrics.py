"""Per-request histograms (seconds, tokens), observed once per final trail, and counters of
who the served requests were attributed to and how (identity sources, vLLM's key decisions,
identity headers ignored from untrusted peers), counted once per trail (revision 0).

`AgentState._on_final` calls `observe` with the trail's summary fields (`Trail.fields()`,
the record's body: no protobuf message is built for it); the histograms are prometheus_client objects in no
registry, exported by `collect` through the agent's private registry.
Only finished trails are observed: a 401 or an aborted request would pull latency down.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q

_FINISHED = q.TrailState.Name(q.TRAIL_STATE_FINISHED)
#: Request latency and TTFT: 10 ms .. 10 min.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
                     120.0, 300.0, 600.0)
#: Time per output token: 1 ms .. 2.5 s.
TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5,
                  1.0, 2.5)
#: Tokens per request: powers of 4 up to 1M.
TOKEN_BUCKETS = tuple(float(4 ** i) for i in range(11))


def _names(enum: object, prefix: str) -> dict[str, str]:
    """An enum's label values by its value names (records carry enums by name): the names in
    lower case without their prefix."""
    return {v.name: v.name.removeprefix(prefix).lower()
            for v in enum.DESCRIPTOR.values}  # type: ignore[attr-defined]


IDENTITY_SOURCES = _names(pb.IdentitySource, "IDENTITY_SOURCE_")
AUTH_DECISIONS = _names(pb.AuthStatus, "AUTH_STATUS_")


class RequestMetrics(Collector):
    def __init__(self) -> None:
        labels = ["model"]
        self.identity = Counter("vllm_audit_request_identity_sources",
                                "Served requests by where their user or tenant came from "
                                "(api_key, proxy_header, claimed, none; unspecified: older hook)",
                                ["field", "source"], registry=None)
        self.auth = Counter("vllm_audit_request_auth_decisions",
                            "Served requests by what vLLM's API-key check decided",
                            ["decision"], registry=None)
        self.ignored_headers = Counter(
            "vllm_audit_request_ignored_identity_headers",
            "Served requests that carried identity headers (tenant, user, X-Forwarded-For) from "
            "a peer that is not a trusted proxy: ignored, named in the record", registry=None)
        for source in IDENTITY_SOURCES.values():  # born at 0
            self.identity.labels("user", source)
            self.identity.labels("tenant", source)
        for decision in AUTH_DECISIONS.values():
            self.auth.labels(decision)
        self.latency = Histogram("vllm_audit_request_latency_seconds",
                                 "End-to-end latency of finished requests", labels,
                                 registry=None, buckets=LATENCY_BUCKETS_S)
        self.ttft = Histogram("vllm_audit_request_time_to_first_token_seconds",
                              "Time to the first response byte of finished served requests",
                              labels, registry=None, buckets=LATENCY_BUCKETS_S)
        self.tpot = Histogram("vllm_audit_request_time_per_output_token_seconds",
                              "(latency - TTFT) / (completion tokens - 1) of finished requests",
                              labels, registry=None, buckets=TPOT_BUCKETS_S)
        self.prompt_tokens = Histogram("vllm_audit_request_prompt_tokens",
                                       "Prompt tokens per finished request", labels,
                                       registry=None, buckets=TOKEN_BUCKETS)
        self.completion_tokens = Histogram("vllm_audit_request_completion_tokens",
                                           "Completion tokens per finished request", labels,
                                           registry=None, buckets=TOKEN_BUCKETS)
        #: (histogram, model) -> its labelled child: `labels()` takes a lock and builds a key
        #: on every call, several times the cost of the observation (one per record). A child
        #: is made on first use, as `labels()` would: a series exists once observed.
        self._children: dict[tuple[Histogram, str], Any] = {}

    def observe(self, s: Mapping[str, Any]) -> None:
        """`s`: a final trail's summary fields, as records.message_to_dict gives them (enums
        by name)."""
        if s["revision"] == 0 and s["http_method"]:  # a served request, counted once
            self.identity.labels("user", IDENTITY_SOURCES.get(s["user_source"], "unspecified")).inc()
            self.identity.labels("tenant",
                                 IDENTITY_SOURCES.get(s["tenant_source"], "unspecified")).inc()
            self.auth.labels(AUTH_DECISIONS.get(s["auth_decision"], "unspecified")).inc()
            if s["ignored_identity_headers"]:
                self.ignored_headers.inc()
        if s["state"] != _FINISHED:
            return
        model = s["model"] or "unknown"
        child = self._child
        latency_ms, ttft_ms, completion = s["latency_ms"], s["ttft_ms"], s["completion_tokens"]
        if latency_ms > 0:
            child(self.latency, model).observe(latency_ms / 1000.0)
        if ttft_ms > 0:
            child(self.ttft, model).observe(ttft_ms / 1000.0)
            # TPOT needs two tokens and a first token strictly before the end.
            if completion > 1 and latency_ms > ttft_ms:
                child(self.tpot, model).observe(
                    (latency_ms - ttft_ms) / 1000.0 / (completion - 1))
        child(self.prompt_tokens, model).observe(s["prompt_tokens"])
        child(self.completion_tokens, model).observe(completion)

    def _child(self, histogram: Histogram, model: str) -> Any:
        key = (histogram, model)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = histogram.labels(model)
        return child

    def collect(self) -> Iterator[Metric]:
        for family in (self.latency, self.ttft, self.tpot, self.prompt_tokens,
                       self.completion_tokens, self.identity, self.auth, self.ignored_headers):
            for metric in family.collect():
                # `_created` series double every histogram's label sets for a timestamp the
                # process start time already gives; dropped here, not by a global switch.
                metric.samples = [x for x in metric.samples if not x.name.endswith("_created")]
                yield metric
