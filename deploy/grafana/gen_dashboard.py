"""Generates deploy/grafana/vllm-audit.json: python deploy/grafana/gen_dashboard.py > deploy/grafana/vllm-audit.json"""
import json
import sys

J = 'job=~"$job"'
RI = "$__rate_interval"
panels = []
y = 0
pid = 0


def row(title):
    global y, pid
    pid += 1
    panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1


x_pos = 0


def panel(title, targets, unit="short", kind="timeseries", width=8, description=""):
    global y, pid, x_pos
    pid += 1
    if x_pos + width > 24:
        x_pos = 0
        y += 8
    p = {
        "type": kind, "title": title, "id": pid, "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": width, "x": x_pos, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [{"refId": chr(65 + i), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for i, (expr, legend) in enumerate(targets)],
    }
    panels.append(p)
    x_pos += width


def end_row():
    global y, x_pos
    y += 8
    x_pos = 0


def q(quantile, metric, by="model"):
    return (f"histogram_quantile({quantile}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{J}}}[{RI}])))")


row("Audit completeness (any non-zero is lost audit data)")
panel("Hook dropped events by reason", [(
    f"sum by (reason) (increase(vllm_audit_hook_dropped_events_total{{{J}}}[{RI}]))", "{{reason}}"),
    (f"sum(increase(vllm_audit_hook_lost_batches_total{{{J}}}[{RI}]))", "lost batches")])
panel("Refused batches by reason", [(
    f"sum by (reason) (increase(vllm_audit_ingest_refused_batches_total{{{J}}}[{RI}]))",
    "{{reason}}")])
panel("Agent losses", [
    (f"sum by (reason) (increase(vllm_audit_publisher_lost_records_total{{{J}}}[{RI}]))",
     "publisher {{reason}}"),
    (f"sum by (reason) (increase(vllm_audit_engine_stats_lost_snapshots_total{{{J}}}[{RI}]))",
     "engine-stats snapshots {{reason}} (telemetry)"),
    (f"sum by (reason) (increase(vllm_audit_record_log_expired_segments_total{{{J}}}[{RI}]))",
     "record-log segments expired ({{reason}})"),
    (f"sum(increase(vllm_audit_record_log_damaged_records_total{{{J}}}[{RI}]))",
     "damaged records"),
    (f"sum by (reason) (increase(vllm_audit_agent_dropped_batches_total{{{J}}}[{RI}]))",
     "batches {{reason}}"),
    (f"sum(increase(vllm_audit_trail_events_truncated_total{{{J}}}[{RI}]))", "events truncated"),
    (f"sum(increase(vllm_audit_trail_late_events_total{{{J}}}[{RI}]))", "late events"),
    (f"sum by (reason) (increase(vllm_audit_allowed_sets_dropped_total{{{J}}}[{RI}]))",
     "allowed sets dropped ({{reason}})"),
    (f"sum(increase(vllm_audit_internal_errors_total{{{J}}}[{RI}]))", "agent internal errors"),
    (f"sum(increase(vllm_audit_hook_internal_errors_total{{{J}}}[{RI}]))", "hook internal errors")])
end_row()
row("Agent")
panel("Ingest", [
    (f"sum(rate(vllm_audit_ingest_events_total{{{J}}}[{RI}]))", "events/s"),
    (f"sum(rate(vllm_audit_ingest_batches_total{{{J}}}[{RI}]))", "batches/s")], unit="ops")
panel("Trails finalised by state", [
    (f"sum by (state) (rate(vllm_audit_trails_total{{{J}}}[{RI}]))", "{{state}}"),
    (f"sum(rate(vllm_audit_trails_finalised_by_linger_total{{{J}}}[{RI}]))", "by linger")],
    unit="ops")
panel("WAL usage", [(f"vllm_audit_wal_bytes{{{J}}} / vllm_audit_wal_max_bytes{{{J}}}",
                     "{{instance}}")], unit="percentunit")
panel("Kafka", [(f"vllm_audit_kafka_connected{{{J}}}", "connected {{instance}}"),
                (f"vllm_audit_undelivered_records{{{J}}}", "undelivered {{instance}}")])
panel("Oldest undelivered record", [(f"vllm_audit_undelivered_oldest_age_seconds{{{J}}}",
                                     "{{instance}}")], unit="s")
panel("Hook sources connected", [(f"vllm_audit_connected_sources{{{J}}}", "{{instance}}"),
                                 (f"vllm_audit_audit_level{{{J}}}", "level {{instance}}")])
panel("Trail store", [
    (f"vllm_audit_trail_store_bytes{{{J}}} / vllm_audit_trail_store_max_bytes{{{J}}}",
     "bytes of cap {{instance}}"),
    (f"vllm_audit_trails_active{{{J}}}", "active {{instance}}"),
    (f"sum by (reason) (increase(vllm_audit_trails_evicted_total{{{J}}}[{RI}]))",
     "evicted {{reason}}")])
panel("Agent process", [
    (f"rate(process_cpu_seconds_total{{{J}}}[{RI}])", "CPU {{instance}}"),
    (f"process_resident_memory_bytes{{{J}}} / 2^30", "RSS GiB {{instance}}")])
panel("Build", [(f"vllm_audit_build_info{{{J}}}", "{{version}} {{instance}}")], kind="table")
end_row()
row("Requests (from audit trails)")
panel("Latency", [(q(p, "vllm_audit_request_latency_seconds"), f"p{int(p * 100)} {{{{model}}}}")
                  for p in (0.5, 0.95, 0.99)], unit="s")
panel("Time to first token", [(q(p, "vllm_audit_request_time_to_first_token_seconds"),
                               f"p{int(p * 100)} {{{{model}}}}") for p in (0.5, 0.95)], unit="s")
panel("Time per output token", [(q(p, "vllm_audit_request_time_per_output_token_seconds"),
                                 f"p{int(p * 100)} {{{{model}}}}") for p in (0.5, 0.95)], unit="s")
panel("Tokens per request (p50)", [
    (q(0.5, "vllm_audit_request_prompt_tokens"), "prompt {{model}}"),
    (q(0.5, "vllm_audit_request_completion_tokens"), "completion {{model}}")])
panel("Finished requests/s", [(
    f"sum by (model) (rate(vllm_audit_request_latency_seconds_count{{{J}}}[{RI}]))",
    "{{model}}")], unit="reqps")
end_row()
row("Engines (vLLM stat logger, per engine index)")
panel("Requests running / waiting", [
    (f"sum by (model, engine_index) (vllm_audit_engine_num_requests_running{{{J}}})",
     "running {{model}}/{{engine_index}}"),
    (f"sum by (model, engine_index) (vllm_audit_engine_num_requests_waiting{{{J}}})",
     "waiting {{model}}/{{engine_index}}")])
panel("KV cache usage", [(
    f"max by (model, engine_index) (vllm_audit_engine_kv_cache_usage_ratio{{{J}}})",
    "{{model}}/{{engine_index}}")], unit="percentunit")
panel("Tokens/s", [
    (f"sum by (model) (rate(vllm_audit_engine_prompt_tokens_total{{{J}}}[{RI}]))", "prompt {{model}}"),
    (f"sum by (model) (rate(vllm_audit_engine_generation_tokens_total{{{J}}}[{RI}]))",
     "generation {{model}}")])


def mean(metric, legend):
    return (f"sum by (model, engine_index) (rate({metric}_sum{{{J}}}[{RI}])) / "
            f"sum by (model, engine_index) (rate({metric}_count{{{J}}}[{RI}]))", legend)


panel("Engine latencies (mean)", [
    mean("vllm_audit_engine_time_to_first_token_seconds", "TTFT {{model}}/{{engine_index}}"),
    mean("vllm_audit_engine_inter_token_latency_seconds", "ITL {{model}}/{{engine_index}}"),
    mean("vllm_audit_engine_time_per_output_token_seconds", "TPOT {{model}}/{{engine_index}}"),
    mean("vllm_audit_engine_request_queue_time_seconds", "queue {{model}}/{{engine_index}}")],
    unit="s")
panel("Prefix-cache hit rate", [(
    f"sum by (model) (rate(vllm_audit_engine_prefix_cache_hits_total{{{J}}}[{RI}])) / "
    f"sum by (model) (rate(vllm_audit_engine_prefix_cache_queries_total{{{J}}}[{RI}]))",
    "{{model}}")], unit="percentunit")
panel("Speculative decoding acceptance", [(
    f"sum by (model) (rate(vllm_audit_engine_spec_decode_accepted_tokens_total{{{J}}}[{RI}])) / "
    f"sum by (model) (rate(vllm_audit_engine_spec_decode_draft_tokens_total{{{J}}}[{RI}]))",
    "{{model}}")], unit="percentunit")
panel("Preemptions/s", [(
    f"sum by (model, engine_index) (rate(vllm_audit_engine_preemptions_total{{{J}}}[{RI}]))",
    "{{model}}/{{engine_index}}")], unit="ops")
end_row()
row("GPUs (DCGM exporter names)")
panel("GPU utilization", [(f"DCGM_FI_DEV_GPU_UTIL{{{J}}}", "{{Hostname}} gpu{{gpu}}"),
                          (f"DCGM_FI_DEV_MEM_COPY_UTIL{{{J}}}", "mem copy {{Hostname}} gpu{{gpu}}")],
      unit="percent")
panel("Framebuffer memory", [(f"DCGM_FI_DEV_FB_USED{{{J}}}", "used {{Hostname}} gpu{{gpu}}"),
                             (f"DCGM_FI_DEV_FB_FREE{{{J}}}", "free {{Hostname}} gpu{{gpu}}")],
      unit="mbytes")
panel("vLLM process GPU memory", [(
    f"sum by (model, pid, gpu) (vllm_audit_gpu_process_memory_used_bytes{{{J}}})",
    "{{model}} pid {{pid}} gpu{{gpu}}")], unit="bytes")
panel("Temperature", [(f"DCGM_FI_DEV_GPU_TEMP{{{J}}}", "{{Hostname}} gpu{{gpu}}")],
      unit="celsius")
panel("Power", [(f"DCGM_FI_DEV_POWER_USAGE{{{J}}}", "{{Hostname}} gpu{{gpu}}")], unit="watt")
panel("ECC errors", [
    (f"increase(DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{J}}}[{RI}])", "uncorrected gpu{{gpu}}"),
    (f"increase(DCGM_FI_DEV_ECC_SBE_VOL_TOTAL{{{J}}}[{RI}])", "corrected gpu{{gpu}}")])
panel("XID errors", [(f"sum by (gpu, xid) (increase(vllm_audit_gpu_xid_errors_total{{{J}}}[{RI}]))",
                      "gpu{{gpu}} xid {{xid}}"),
                     (f"DCGM_FI_DEV_XID_ERRORS{{{J}}}", "last xid gpu{{gpu}}")])
panel("Clock throttle reasons (bitmask)", [(f"DCGM_FI_DEV_CLOCK_THROTTLE_REASONS{{{J}}}",
                                            "gpu{{gpu}}")])
panel("GPU telemetry", [(f"vllm_audit_gpu_available{{{J}}}", "available {{instance}}"),
                        (f"sum by (field) (increase(vllm_audit_gpu_read_errors_total{{{J}}}[{RI}]))",
                         "read errors {{field}}")])

end_row()
# The fleet service (`vllm-audit fleet`): its own job in Prometheus, selected like the rest.
row("Fleet (vllm-audit fleet: every pod's records, verified as they stream)")
panel("Fleet consumer lag", [(
    f"sum by (instance, topic) (vllm_audit_fleet_consumer_lag_records{{{J}}})",
    "{{instance}} {{topic}}")], description="records on the broker past the consumer group's "
      "positions: growing means the fleet stores slower than the agents publish")
panel("Fleet records/s", [
    (f"sum by (instance) (rate(vllm_audit_fleet_records_stored_total{{{J}}}[{RI}]))",
     "stored {{instance}}"),
    (f"sum by (instance) (rate(vllm_audit_fleet_records_total{{{J}}}[{RI}]))",
     "consumed {{instance}}"),
    (f"sum by (instance) (increase(vllm_audit_fleet_store_errors_total{{{J}}}[{RI}]))",
     "store errors {{instance}}")], unit="ops")
panel("Fleet verified heads", [
    (f"max by (log_id, pod) (vllm_audit_fleet_log_verified_seq{{{J}}})", "{{pod}} {{log_id}}"),
    (f"max by (log_id, pod) (vllm_audit_fleet_log_witnessed_tree_size{{{J}}})",
     "witnessed tree size {{pod}} {{log_id}}")],
      description="the seq up to which each log verifies, and the tree size its witnesses cosigned")
panel("Fleet silent logs (time since a log's last record)", [(
    f"time() - max by (log_id, pod) (vllm_audit_fleet_log_last_record_timestamp_seconds{{{J}}})",
    "{{pod}} {{log_id}}")], unit="s", description="an hour of silence alerts "
      "(VllmAuditFleetLogSilent): a pod gone, or an agent that cannot reach Kafka")
panel("Fleet breaks", [
    (f"sum by (status) (vllm_audit_fleet_logs{{{J}}})", "logs {{status}}"),
    (f"max by (log_id, pod, reason) (vllm_audit_fleet_log_broken{{{J}}})",
     "{{pod}} {{log_id}} {{reason}}")],
      description="logs by verification status, and each log that does not verify, by reason "
      "(sticky; VllmAuditFleetLogBroken)")
panel("Fleet unwitnessed logs", [(
    f"max by (log_id, pod) (vllm_audit_fleet_log_unwitnessed_seconds{{{J}}})",
    "{{pod}} {{log_id}}")], unit="s", description="age of each log's oldest checkpoint no "
      "witness quorum cosigned (with --witness-key); past --unwitnessed-seconds it alerts")

dashboard = {
    "title": "vLLM audit", "uid": "vllm-audit", "editable": True, "schemaVersion": 39,
    "version": 1, "tags": ["vllm", "vllm-audit"], "timezone": "browser",
    "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
    "annotations": {"list": []}, "links": [], "graphTooltip": 1, "fiscalYearStartMonth": 0,
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource",
         "query": "prometheus", "hide": 0, "refresh": 1, "options": [],
         "includeAll": False, "multi": False},
        {"name": "job", "label": "Job", "type": "query",
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         # The agents' jobs and the fleet's (which has no build info of its own).
         "query": {"query": 'label_values({__name__=~"vllm_audit_build_info|'
                            'vllm_audit_fleet_batches_total"}, job)', "refId": "job"},
         "refresh": 2, "includeAll": True, "multi": True, "allValue": ".+",
         "hide": 0, "options": [], "sort": 1},
    ]},
    "panels": panels,
}
json.dump(dashboard, sys.stdout, indent=2)
sys.stdout.write("\n")
