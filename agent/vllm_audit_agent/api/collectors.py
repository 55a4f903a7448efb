"""Prometheus collectors: a private registry whose collectors read the agent's snapshots.

A scrape never calls NVML, Kafka or the WAL: it reads counters and the latest snapshots.
Every labelled counter carries every reason of its closed set (telemetry/reasons.py) from the
start, at 0, and each family counts one unit (events, batches, records, bytes or errors).
Serving the exposition is the HTTP endpoint's job (http_endpoint.py).
"""

from __future__ import annotations

import platform
import socket
from collections.abc import Iterator, Mapping
from importlib import metadata

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from vllm_audit_agent.api.gate import REFUSALS as AUTH_REFUSALS
from vllm_audit_agent.api.key_custody import KeyCustodyCollector
from vllm_audit_agent.api.siem_metrics import SiemCollector
from vllm_audit_agent.delivery.otlp_export import OtlpExporter
from vllm_audit_agent.delivery.siem_copies import SiemCopySink
from vllm_audit_agent.model.validation import CLAMPABLE_FIELDS
from vllm_audit_agent.records.entry import TOPICS
from vllm_audit_agent.state import AgentState
from vllm_audit_agent.storage.wal import WRITE_ERROR_REASONS
from vllm_audit_agent.telemetry import reasons as r
from vllm_audit_agent.telemetry.engines import SourceSeries
from vllm_audit_agent.telemetry.gpu_metrics import gpu_metrics

ENGINE_LABELS = ["source", "model", "engine_index"]
#: Engine gauges and counters: (EngineStats field, metric name, help, is counter).
ENGINE_VALUES = (
    ("kv_cache_usage", "vllm_audit_engine_kv_cache_usage_ratio",
     "KV-cache usage (0..1) last reported by vLLM", False),
    ("num_running_reqs", "vllm_audit_engine_num_requests_running",
     "Requests running in the engine", False),
    ("num_waiting_reqs", "vllm_audit_engine_num_requests_waiting",
     "Requests waiting in the engine", False),
    ("prompt_tokens", "vllm_audit_engine_prompt_tokens", "Prompt tokens processed", True),
    ("generation_tokens", "vllm_audit_engine_generation_tokens", "Generated tokens", True),
    ("prefix_cache_queries", "vllm_audit_engine_prefix_cache_queries",
     "Prefix-cache queried tokens", True),
    ("prefix_cache_hits", "vllm_audit_engine_prefix_cache_hits", "Prefix-cache hit tokens", True),
    ("cached_prompt_tokens", "vllm_audit_engine_cached_prompt_tokens",
     "Prompt tokens of finished requests served from a cache", True),
    ("num_preempted_reqs", "vllm_audit_engine_preemptions", "Requests preempted", True),
    ("finished_requests", "vllm_audit_engine_finished_requests", "Requests finished", True),
    ("spec_decode_num_drafts", "vllm_audit_engine_spec_decode_drafts",
     "Speculative-decoding drafts", True),
    ("spec_decode_num_draft_tokens", "vllm_audit_engine_spec_decode_draft_tokens",
     "Speculative-decoding draft tokens proposed", True),
    ("spec_decode_num_accepted_tokens", "vllm_audit_engine_spec_decode_accepted_tokens",
     "Speculative-decoding draft tokens accepted", True),
)
#: Engine summaries (sum and count, seconds): (name, help, sum field, count field).
ENGINE_SUMMARIES = (
    ("vllm_audit_engine_time_to_first_token_seconds", "Time to first token (engine)",
     "ttft_seconds_sum", "ttft_count"),
    ("vllm_audit_engine_inter_token_latency_seconds", "Time between output tokens (engine)",
     "inter_token_latency_seconds_sum", "inter_token_latency_count"),
    ("vllm_audit_engine_time_per_output_token_seconds",
     "Mean time per output token of finished requests (engine)", "tpot_seconds_sum",
     "tpot_count"),
    ("vllm_audit_engine_request_queue_time_seconds", "Time finished requests waited in queue",
     "queue_time_seconds_sum", "finished_requests"),
    ("vllm_audit_engine_e2e_request_latency_seconds", "End-to-end latency in the engine",
     "e2e_latency_seconds_sum", "finished_requests"),
    ("vllm_audit_engine_request_prefill_time_seconds", "Prefill time of finished requests",
     "prefill_time_seconds_sum", "finished_requests"),
    ("vllm_audit_engine_request_decode_time_seconds", "Decode time of finished requests",
     "decode_time_seconds_sum", "finished_requests"),
)
#: Sites where the agent swallows an error (closed set; unknown sites go to `other`).
AGENT_ERROR_SITES = ("http", "ingest.stream", "ingest.apply", "sweep", r.OTHER)


def counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(name, doc, value=value)


def labelled(name: str, doc: str, label: str, values: Mapping[str, int],
             reasons: tuple[str, ...]) -> Metric:
    """A counter with one sample per reason of its closed set, present at 0."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in r.closed(values, reasons).items():
        family.add_metric([key], value)
    return family


#: What a ReadAudit call came to (ingest/service.py counts each).
READ_AUDIT_OUTCOMES = ("answered", "not_found", "invalid")

class AgentCollector(Collector):
    def __init__(self, state: AgentState, hostname: str | None = None) -> None:
        self.state = state
        self.hostname = hostname or socket.gethostname()

    def collect(self) -> Iterator[Metric]:
        live = self.state.engines.live(s.source_id for s in self.state.sessions)
        yield from self._engines(live)
        yield from self._ingest()
        yield from self._losses()
        yield from self._trails()
        yield from self._storage()
        yield from self._security()
        pids = {series.pid: (sid, series.model) for sid, series in live if series.pid}
        scope = ({uuid for _, series in live for uuid in series.gpu_uuids}
                 if self.state.config.gpu_scope == "pod" else None)
        yield from gpu_metrics(self.state.gpu, self.hostname, pids, scope)

    def _engines(self, live: list[tuple[str, SourceSeries]]) -> Iterator[Metric]:
        values = [(field, (CounterMetricFamily if is_counter else GaugeMetricFamily)(
            name, doc, labels=ENGINE_LABELS)) for field, name, doc, is_counter in ENGINE_VALUES]
        summaries = [(SummaryMetricFamily(name, doc, labels=ENGINE_LABELS), total, count)
                     for name, doc, total, count in ENGINE_SUMMARIES]
        for source_id, series in live:
            for index, stats in sorted(series.engines.items()):
                lv = [source_id, series.model, str(index)]
                for field, family in values:
                    family.add_metric(lv, getattr(stats, field))
                for summary, total, count in summaries:
                    summary.add_metric(lv, count_value=getattr(stats, count),
                                       sum_value=getattr(stats, total))
        yield from (family for _, family in values)
        yield from (summary for summary, _, _ in summaries)
        yield GaugeMetricFamily("vllm_audit_connected_sources", "Hook streams connected",
                                value=len(self.state.sessions))
        yield GaugeMetricFamily("vllm_audit_audit_level", "Audit level pushed to hooks",
                                value=self.state.level)

    def _security(self) -> Iterator[Metric]:
        """Refused query/control calls and whether every hook runs the agent's level."""
        st = self.state
        yield labelled("vllm_audit_query_refused_calls",
                       "Query and control calls refused by the auth interceptor", "reason",
                       {reason: st.counters[f"auth_{reason}"] for reason in AUTH_REFUSALS},
                       AUTH_REFUSALS)
        levels = st.source_levels()
        yield GaugeMetricFamily(
            "vllm_audit_level_mismatch_sources",
            "Connected hooks not running the agent's audit level past the apply deadline",
            value=sum(1 for s in levels if s.mismatch))
        applied = GaugeMetricFamily(
            "vllm_audit_source_applied_level",
            "Audit level each connected hook reports it runs (AuditLevel number; 0 unreported)",
            labels=["source", "role"])
        for s in levels:
            applied.add_metric([s.source_id, s.process_role], s.applied_level)
        yield applied
        yield from self._hook_self_timing()

    def _hook_self_timing(self) -> Iterator[Metric]:
        """The hooks' own cost, from hooks started with VLLM_AUDIT_SELF_TIMING=true (nothing
        at all otherwise), by site: `engine` (scheduler and structured-output wrappers on the
        engine thread), `stat_logger` (its record() per iteration), `middleware` (on the API
        server's event loop) — wall time in the hook's own code — and `sender` (CPU time of
        the hook's background threads)."""
        timings = self.state.self_timings()
        if not timings:
            return  # no hook measures itself: nothing is exported, not even empty families
        labels = ["source", "role", "site"]
        seconds = CounterMetricFamily(
            "vllm_audit_hook_self_seconds",
            "Time in the hook's own code: wall on vLLM's threads, CPU on its sender's",
            labels=labels)
        calls = CounterMetricFamily(
            "vllm_audit_hook_self_calls",
            "Timed hook calls: engine entry points, stat-logger records, HTTP requests",
            labels=labels)
        steps = CounterMetricFamily("vllm_audit_hook_self_steps",
                                    "Engine steps the hook saw (schedule() calls with work)",
                                    labels=["source", "role"])
        request_steps = CounterMetricFamily("vllm_audit_hook_self_request_steps",
                                            "Requests scheduled, summed over those steps",
                                            labels=["source", "role"])
        for source, role, t in timings:
            for site, ns, n in (("engine", t.hook_ns, t.hook_calls),
                                ("stat_logger", t.stat_logger_ns, t.stat_logger_calls),
                                ("middleware", t.middleware_ns, t.middleware_requests)):
                seconds.add_metric([source, role, site], ns / 1e9)
                calls.add_metric([source, role, site], n)
            seconds.add_metric([source, role, "sender"], t.sender_cpu_ns / 1e9)
            steps.add_metric([source, role], t.steps)
            request_steps.add_metric([source, role], t.request_steps)
        yield from (seconds, calls, steps, request_steps)

    def _ingest(self) -> Iterator[Metric]:
        c = self.state.counters
        yield counter("vllm_audit_ingest_batches", "Batches ingested", c["batches"])
        yield counter("vllm_audit_ingest_events", "Events ingested", c["events"])
        yield counter("vllm_audit_ingest_duplicate_batches",
                      "Resent batches dropped as duplicates", c["duplicate_batches"])
        yield labelled("vllm_audit_ingest_refused_batches",
                       "Batches refused, not stored (retriable ones the hook keeps and resends)",
                       "reason", {k: c[f"refused_batches_{k}"] for k in r.REFUSAL_REASONS},
                       r.REFUSAL_REASONS)
        yield labelled("vllm_audit_ingest_clamped_fields",
                       "Event fields repaired by validation at ingest", "field",
                       self.state.clamped_fields, CLAMPABLE_FIELDS)
        yield counter("vllm_audit_ingest_dedup_holes_skipped",
                      "Seq holes the de-dup window gave up on to bound its memory",
                      c["dedup_holes_skipped"])
        yield counter("vllm_audit_ingest_dedup_epochs_evicted",
                      "Epochs of a source whose de-dup window was forgotten (oldest first)",
                      c["dedup_epochs_evicted"])
        yield labelled("vllm_audit_ingest_read_audit",
                       "In-response audit reads over the ingest socket (IngestService.ReadAudit): "
                       "answered, not found (not yet, or another launch's trail), invalid",
                       "outcome", {k: c[f"read_audit_{k}"] for k in READ_AUDIT_OUTCOMES},
                       READ_AUDIT_OUTCOMES)
        yield counter("vllm_audit_wal_replay_duplicate_batches",
                      "Second copies of a batch skipped when replaying the WAL",
                      c["wal_replay_duplicates"])

    def _losses(self) -> Iterator[Metric]:
        st = self.state
        hook_events = {k: v for k, v in st.hook_dropped.items()
                       if k != r.HOOK_MISSING_BATCHES
                       and not k.startswith(r.HOOK_INTERNAL_ERROR_PREFIX)}
        yield labelled("vllm_audit_hook_dropped_events", "Events the hooks could not deliver",
                       "reason", hook_events, r.HOOK_EVENT_DROP_REASONS)
        yield counter("vllm_audit_hook_lost_batches",
                      "Batches the hooks reported lost and the agent never stored",
                      st.hook_dropped[r.HOOK_MISSING_BATCHES])
        yield counter("vllm_audit_hook_internal_errors", "Errors the hooks swallowed",
                      sum(v for k, v in st.hook_dropped.items()
                          if k.startswith(r.HOOK_INTERNAL_ERROR_PREFIX)))
        yield labelled("vllm_audit_agent_dropped_batches", "Batches the agent lost",
                       "reason", {k: v for k, v in st.agent_dropped.items()
                                  if k not in r.AGENT_BYTE_DROP_KEYS + r.AGENT_EVENT_DROP_KEYS},
                       r.AGENT_BATCH_DROP_REASONS)
        yield counter("vllm_audit_agent_dropped_events_without_body",
                      "Events dropped at ingest for having no body (an unknown kind); the rest "
                      "of their batch was stored", st.agent_dropped["events_without_body"])
        yield counter("vllm_audit_wal_torn_tail_bytes",
                      "Bytes cut from a torn WAL tail at start (a crash mid-append)",
                      st.agent_dropped["wal_torn_tail_bytes"])
        yield counter("vllm_audit_wal_damaged_bytes",
                      "Damaged WAL bytes found at start, moved to the quarantine directory",
                      st.agent_dropped["wal_damaged_bytes"])
        yield labelled("vllm_audit_wal_failed_appends", "WAL appends the file system refused "
                       "(the log was left as it was and the batch refused)", "reason",
                       st.wal.failed_appends, WRITE_ERROR_REASONS)
        yield GaugeMetricFamily("vllm_audit_wal_writable",
                                "1 while the WAL's file system accepts appends",
                                value=1 if st.wal.healthy else 0)
        pc = st.publisher.counters
        yield labelled("vllm_audit_publisher_lost_records",
                       "Audit records that left without reaching Kafka (dead-lettered: kept in "
                       "records/dead-letter.jsonl)", "reason",
                       r.publisher_losses(st.publisher.dead_lettered),
                       r.PUBLISHER_RECORD_LOSS_REASONS)
        yield labelled("vllm_audit_engine_stats_lost_snapshots",
                       "Engine-stats snapshots (telemetry, not audit records) lost on their "
                       "best-effort path to Kafka", "reason", r.engine_stats_losses(pc),
                       r.ENGINE_STATS_LOSS_REASONS)
        yield labelled("vllm_audit_log_lines_suppressed", "Log lines not written by the "
                       "rate limit on repeated lines (each line that passes after says how "
                       "many)", "logger", st.log_limit.suppressed, st.log_limit.prefixes)
        yield labelled("vllm_audit_publisher_failed_sends", "Record sends the broker failed "
                       "(retried, or dead-lettered when permanent)", "reason",
                       st.publisher.failures, r.PUBLISHER_FAILURE_REASONS)
        yield counter("vllm_audit_publisher_connect_errors", "Failed Kafka connection attempts",
                      pc["connect_errors"])
        yield counter("vllm_audit_kafka_unreachable", "Times the connection probe found no Kafka "
                      "broker reachable (vllm_audit_kafka_connected went 0)", pc["unreachable"])
        yield counter("vllm_audit_kafka_lost_acknowledged", "Times Kafka gave an offset again "
                      "(it lost records it had acknowledged: a restart on lost storage, a topic "
                      "recreated); the records are sent again from the record log",
                      pc["broker_lost_acknowledged"])
        gate = getattr(st.publisher.sink, "gate_counts", None)
        yield counter("vllm_audit_kafka_metadata_rereads", "Metadata read again before the "
                      "first produce request after a Kafka connection closed (so a broker that "
                      "forgot a topic recreates it before it acknowledges records into it)",
                      gate.rereads if gate is not None else 0)
        yield counter("vllm_audit_records_republished", "Records sent again from the record log "
                      "after Kafka lost what it had acknowledged", pc["republished"])
        yield counter("vllm_audit_publisher_retries", "Kafka sends retried", pc["retries"])
        yield counter("vllm_audit_publisher_stop_timeouts",
                      "Kafka producer closes cut by the shutdown deadline", pc["stop_timeouts"])
        yield counter("vllm_audit_records_published", "Records published", pc["published"])
        yield labelled("vllm_audit_internal_errors", "Errors the agent swallowed", "site",
                       st.errors, AGENT_ERROR_SITES)

    def _trails(self) -> Iterator[Metric]:
        trails = self.state.trails
        yield labelled("vllm_audit_trails", "Final trails by state", "state",
                       trails.finished_by_state, r.FINAL_TRAIL_STATES)
        yield GaugeMetricFamily("vllm_audit_trails_active", "Trails not yet final",
                                value=trails.active_count())
        yield GaugeMetricFamily("vllm_audit_trails_stored", "Trails held in memory",
                                value=len(trails))
        yield labelled("vllm_audit_trails_evicted", "Trails evicted from memory", "reason",
                       {k: trails.counters[f"evicted_{k}"] for k in r.TRAIL_EVICTION_REASONS},
                       r.TRAIL_EVICTION_REASONS)
        yield counter("vllm_audit_trails_evicted_bytes", "Bytes of the trails evicted from memory",
                      trails.counters["evicted_bytes"])
        yield counter("vllm_audit_trails_deleted",
                      "Final trails deleted from the query store through the management API "
                      "(their records stay in the record log)", trails.counters["deleted"])
        yield GaugeMetricFamily("vllm_audit_trail_store_bytes",
                                "Accounted bytes of the trails held in memory", value=trails.bytes)
        yield GaugeMetricFamily("vllm_audit_trail_store_max_bytes",
                                "Cap on the trail store's bytes", value=trails.max_bytes)
        yield counter("vllm_audit_trails_finalised_by_linger",
                      "Trails finalised because their other half did not arrive in time",
                      trails.counters["finalised_by_linger"])
        yield counter("vllm_audit_trail_events_truncated",
                      "Events not kept because their trail reached max_trail_events",
                      trails.counters["events_truncated"])
        yield labelled("vllm_audit_allowed_sets_dropped",
                       "Allowed-token sets the hooks dropped over a size cap (steps marked "
                       "allowed_set_truncated)", "reason",
                       {k: trails.counters[f"allowed_sets_dropped_{k}"]
                        for k in r.ALLOWED_SET_DROP_REASONS}, r.ALLOWED_SET_DROP_REASONS)
        yield counter("vllm_audit_trail_late_events",
                      "Events that arrived after their trail was final (not in its record)",
                      trails.counters["late_events"])
        yield counter("vllm_audit_trails_incomplete_rejoined",
                      "Forced trails out of memory (or from before a restart) whose late half "
                      "joined them again: a revision with both halves",
                      trails.counters["incomplete_rejoined"])
        yield counter("vllm_audit_trails_incomplete_forgotten",
                      "Forced trails forgotten past the remembered bound: a late half of one "
                      "makes a revision without the half recorded before",
                      trails.counters["incomplete_forgotten"])
        yield labelled("vllm_audit_trails_rebuilt_recorded",
                       "Trails the WAL replay rebuilt open whose newest record the record log "
                       "held: continued as that forced record, or dropped as a fragment of a "
                       "record written whole", "outcome",
                       {k: trails.counters[f"rebuilt_recorded_{k}"]
                        for k in r.TRAIL_REBUILT_RECORDED_OUTCOMES},
                       r.TRAIL_REBUILT_RECORDED_OUTCOMES)

    def _storage(self) -> Iterator[Metric]:
        st = self.state
        wal = st.wal
        yield GaugeMetricFamily("vllm_audit_wal_bytes", "Bytes in the WAL", value=wal.size)
        yield GaugeMetricFamily("vllm_audit_wal_max_bytes",
                                "WAL cap; past it batches are refused", value=wal.max_bytes)
        yield GaugeMetricFamily("vllm_audit_wal_segments", "WAL segment files",
                                value=len(wal.segments()))
        yield counter("vllm_audit_wal_deleted_segments",
                      "WAL segments deleted (delivered, or expired without Kafka)",
                      wal.deleted_segments)
        log = st.records
        yield GaugeMetricFamily("vllm_audit_record_log_bytes", "Bytes in the record log",
                                value=log.wal.size)
        yield GaugeMetricFamily("vllm_audit_record_log_max_bytes", "Cap on the record log",
                                value=log.wal.max_bytes)
        yield labelled("vllm_audit_record_log_appended_records", "Records appended to the "
                       "hash-chained record log", "type",
                       {t: log.counters[f"appended_{t}"] for t in TOPICS}, tuple(TOPICS))
        yield labelled("vllm_audit_record_log_expired_segments", "Record-log segments deleted: "
                       "size = the archive at its cap without Kafka (oldest records gone), "
                       "age = retention", "reason",
                       {k: log.counters[f"expired_segments_{k}"]
                        for k in r.RECORD_LOG_EXPIRY_REASONS}, r.RECORD_LOG_EXPIRY_REASONS)
        history = st.stats_history.counters
        yield labelled("vllm_audit_stats_history_snapshots", "Engine-stats snapshots for the "
                       "on-disk time series (`stats export`): written, or lost to a write error",
                       "outcome", {"written": history["snapshots_written"],
                                   "write_error": history["write_errors"]},
                       ("written", "write_error"))
        yield counter("vllm_audit_meta_audit_errors",
                      "Query/control calls whose access record could not be written",
                      st.counters["meta_audit_errors"])
        yield labelled("vllm_audit_refusal_records", "Records of refused query/control calls "
                       "(a flood is one per peer, token and reason a window), or refusals only "
                       "counted past the access budget's overdraft", "outcome",
                       {"written": st.counters["meta_audit_refusal_records"],
                        "dropped": st.counters["meta_audit_refusal_records_dropped"]},
                       ("written", "dropped"))
        yield GaugeMetricFamily("vllm_audit_access_records_bytes",
                                "Bytes of access records in the record log (their budget: "
                                "vllm_audit_access_records_budget_bytes)",
                                value=st.records.access_bytes)
        yield GaugeMetricFamily("vllm_audit_access_records_budget_bytes",
                                "The part of the record log's cap access records may hold",
                                value=st.records.access_budget_bytes)
        yield counter("vllm_audit_record_log_replay_duplicates",
                      "Trails rebuilt from the ingest WAL at start whose record was already in "
                      "the log (not written twice)", st.counters["records_deduplicated_at_replay"])
        yield counter("vllm_audit_record_log_damaged_records",
                      "Record-log records found damaged at start (moved to quarantine/)",
                      st.agent_dropped["record_log_damaged_records"])
        yield GaugeMetricFamily("vllm_audit_kafka_connected",
                                "1 while the publisher has a Kafka connection",
                                value=1 if st.publisher.connected else 0)
        # What is owed downstream: records in the log past the publisher's cursor.
        yield GaugeMetricFamily("vllm_audit_undelivered_records",
                                "Records in the log not yet acknowledged by Kafka",
                                value=st.publisher.backlog_records)
        yield GaugeMetricFamily("vllm_audit_undelivered_bytes",
                                "Bytes of the records not yet acknowledged by Kafka",
                                value=st.publisher.backlog_bytes)
        yield GaugeMetricFamily("vllm_audit_undelivered_oldest_age_seconds",
                                "Age of the oldest record not yet acknowledged (0 when none)",
                                value=st.publisher.oldest_unpublished_age_seconds)


def build_info() -> Metric:
    try:
        version = metadata.version("vllm-audit")
    except metadata.PackageNotFoundError:
        version = "unknown"
    info = InfoMetricFamily("vllm_audit_build", "Build of the running agent",
                            labels=["version", "python_version"])
    info.add_metric([version, platform.python_version()], {})
    return info


class BuildInfo(Collector):
    def __init__(self) -> None:
        self.info = build_info()

    def collect(self) -> Iterator[Metric]:
        yield self.info


def make_registry(state: AgentState, otlp: OtlpExporter | None = None) -> CollectorRegistry:
    """`otlp`: the OTLP export when --otlp-endpoint is set (its counters at 0 without)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(state))
    registry.register(state.request_metrics)
    sink = getattr(state.publisher, "sink", None)  # a Publisher's (the memory one has none)
    registry.register(SiemCollector(sink if isinstance(sink, SiemCopySink) else None, otlp))
    registry.register(BuildInfo())
    registry.register(KeyCustodyCollector(state.config.signing_key_file, state.config.data_dir))
    # The standard process_* names: the registry is this process's alone.
    ProcessCollector(registry=registry)
    return registry
