"""Prometheus exposition: a private registry whose collector reads the agent's snapshots,
and a tiny asyncio HTTP server for /metrics, /healthz and /readyz.

A scrape never calls NVML, Kafka or the WAL: it reads counters and the latest snapshots.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .state import AgentState


class AgentCollector(Collector):
    def __init__(self, state: AgentState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        st = self.state
        labels = ["source", "model"]
        kv = GaugeMetricFamily("vllm_audit_engine_kv_cache_usage_ratio",
                               "KV-cache usage (0..1) last reported by vLLM", labels=labels)
        running = GaugeMetricFamily("vllm_audit_engine_num_requests_running",
                                    "Requests running in the engine", labels=labels)
        waiting = GaugeMetricFamily("vllm_audit_engine_num_requests_waiting",
                                    "Requests waiting in the engine", labels=labels)
        prompt = CounterMetricFamily("vllm_audit_engine_prompt_tokens",
                                     "Prompt tokens processed", labels=labels)
        gen = CounterMetricFamily("vllm_audit_engine_generation_tokens",
                                  "Generated tokens", labels=labels)
        pq = CounterMetricFamily("vllm_audit_engine_prefix_cache_queries",
                                 "Prefix-cache queried tokens", labels=labels)
        ph = CounterMetricFamily("vllm_audit_engine_prefix_cache_hits",
                                 "Prefix-cache hit tokens", labels=labels)
        for source_id, src in st.latest_engine_stats():
            s = src.last_stats
            assert s is not None
            lv = [source_id, src.model]
            kv.add_metric(lv, s.kv_cache_usage)
            running.add_metric(lv, s.num_running_reqs)
            waiting.add_metric(lv, s.num_waiting_reqs)
            prompt.add_metric(lv, s.prompt_tokens)
            gen.add_metric(lv, s.generation_tokens)
            pq.add_metric(lv, s.prefix_cache_queries)
            ph.add_metric(lv, s.prefix_cache_hits)
        yield from (kv, running, waiting, prompt, gen, pq, ph)

        trails = CounterMetricFamily("vllm_audit_trails", "Final trails by state", labels=["state"])
        for state in ("finished", "aborted", "failed"):
            trails.add_metric([state], st.trails.finished_by_state[state])
        yield trails
        yield GaugeMetricFamily("vllm_audit_trails_active", "Trails not yet final",
                                value=st.trails.active_count())
        yield GaugeMetricFamily("vllm_audit_trails_stored", "Trails held in memory",
                                value=len(st.trails))
        evicted = CounterMetricFamily("vllm_audit_trails_evicted", "Trails evicted from memory",
                                      labels=["reason"])
        for reason in ("final", "active"):
            evicted.add_metric([reason], st.trails.counters[f"evicted_{reason}"])
        yield evicted
        yield CounterMetricFamily("vllm_audit_ingest_batches", "Batches ingested",
                                  value=st.counters["batches"])
        yield CounterMetricFamily("vllm_audit_ingest_events", "Events ingested",
                                  value=st.counters["events"])
        yield CounterMetricFamily("vllm_audit_ingest_duplicate_batches",
                                  "Resent batches dropped as duplicates",
                                  value=st.counters["duplicate_batches"])
        yield _labelled("vllm_audit_ingest_refused_batches",
                        "Batches refused, not stored (retriable ones are kept and resent by "
                        "the hook; invalid and too_big ones are dropped)", "reason",
                        st.refused_by_reason())
        yield _labelled("vllm_audit_ingest_clamped_fields",
                        "Event fields repaired by validation at ingest", "field",
                        st.clamped_fields)
        yield CounterMetricFamily("vllm_audit_ingest_dedup_holes_skipped",
                                  "Seq holes the de-dup window gave up on to bound its memory",
                                  value=st.counters["dedup_holes_skipped"])
        yield _labelled("vllm_audit_hook_dropped_events", "Events the hooks could not deliver",
                        "reason", st.hook_dropped)
        yield _labelled("vllm_audit_agent_dropped", "Items the agent dropped", "reason",
                        st.agent_drops())
        yield CounterMetricFamily("vllm_audit_records_published", "Records published",
                                  value=st.publisher.counters["published"])
        yield GaugeMetricFamily("vllm_audit_wal_bytes", "Bytes in the WAL", value=st.wal.size)
        yield GaugeMetricFamily("vllm_audit_wal_max_bytes", "WAL cap; past it batches are refused",
                                value=st.wal.max_bytes)
        yield GaugeMetricFamily("vllm_audit_wal_segments", "WAL segment files",
                                value=len(st.wal.segments()))
        yield CounterMetricFamily("vllm_audit_wal_deleted_segments",
                                  "WAL segments deleted (delivered, or expired without Kafka)",
                                  value=st.wal.deleted_segments)
        yield CounterMetricFamily("vllm_audit_wal_expired_segments",
                                  "WAL segments expired at the cap without Kafka (records lost)",
                                  value=st.counters["wal_expired_segments"])
        yield GaugeMetricFamily("vllm_audit_connected_sources", "Hook streams connected",
                                value=len(st.sessions))
        yield GaugeMetricFamily("vllm_audit_audit_level", "Audit level pushed to hooks",
                                value=st.level)
        yield GaugeMetricFamily("vllm_audit_gpu_available", "1 when GPU telemetry is available",
                                value=1 if st.gpu.available else 0)
        util = GaugeMetricFamily("vllm_audit_gpu_utilization_ratio", "GPU utilization",
                                 labels=["gpu", "name"])
        mem = GaugeMetricFamily("vllm_audit_gpu_memory_used_bytes", "GPU memory used",
                                labels=["gpu", "name"])
        for r in st.gpu.snapshot:
            util.add_metric([str(r.index), r.name], r.utilization_pct / 100.0)
            mem.add_metric([str(r.index), r.name], r.memory_used_bytes)
        yield util
        yield mem
        yield _labelled("vllm_audit_internal_errors", "Errors the agent swallowed", "site",
                        st.errors)


def _labelled(name: str, doc: str, label: str, values: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def make_registry(state: AgentState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(state))
    return registry


class HttpEndpoint:
    """/metrics, /healthz (alive), /readyz (ingest and query serving). HTTP/1.0-style, tiny."""

    def __init__(self, state: AgentState, registry: CollectorRegistry) -> None:
        self.state = state
        self.registry = registry
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if path == "/metrics":
                body = generate_latest(self.registry)
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
            elif path == "/healthz":
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/readyz":
                ready = self.state.ready
                status = "200 OK" if ready else "503 Service Unavailable"
                ctype, body = "text/plain", b"ready\n" if ready else b"not ready\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        except Exception:
            self.state.errors["http"] += 1
        finally:
            writer.close()
