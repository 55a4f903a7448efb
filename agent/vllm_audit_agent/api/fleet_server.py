"""The fleet's query API served: the agent's QueryService (gRPC) and its JSON HTTP routes over a
FleetStore, with the agent's gate (tokens, roles, tenant scope, limits, rate limits, refusal
counters) and meta-audit.

Access records (who read what, from where, with what outcome; refusals too) go to a record
log of the API's own in `--api-data-dir` (`<dir>/records`): hash-chained and signed like an
agent's, verified with `vllm-audit verify --data-dir <dir>`; the fleet store is never written
by a reader. One process per directory (DataDirLock), as the agent. While that log is full,
queries are refused (429 / RESOURCE_EXHAUSTED), never served unrecorded.

`running_fleet_api(store, config)` runs both listeners until the block ends; the fleet
service enters it beside its consumer with the same store (a `WatchedStore`, so WatchTrails
streams what the consumer stores). The HTTP port also serves /metrics: the API's refusal
counters and the usage by tenant and model (usage_metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # public as health.aio, which mypy cannot see
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from vllm_audit.v1 import query_pb2, query_pb2_grpc
from vllm_audit_agent.api.auth_interceptor import AuthInterceptor
from vllm_audit_agent.api.fleet_config import FleetApiConfig
from vllm_audit_agent.api.fleet_findings import StoreFindings
from vllm_audit_agent.api.fleet_trails import FleetApi
from vllm_audit_agent.api.gate import REFUSALS
from vllm_audit_agent.api.http_api import ManagementApi
from vllm_audit_agent.api.meta_audit import RecordLogAuditSink
from vllm_audit_agent.api.page_tokens import PageTokens
from vllm_audit_agent.api.query import QueryServicer
from vllm_audit_agent.api.rate_limit import TokenBuckets
from vllm_audit_agent.api.tls import check_listener, http_ssl_context, server_credentials
from vllm_audit_agent.api.tokens import load_token_table
from vllm_audit_agent.api.usage import load_price_table
from vllm_audit_agent.api.usage_metrics import UsageCollector
from vllm_audit_agent.config import parse_address
from vllm_audit_agent.fleet.store import FleetStore, TrailQuery
from vllm_audit_agent.records.chain import load_or_create_signer
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.storage.datadir import DataDirLock

logger = logging.getLogger("vllm_audit.fleet")

QUERY_HEALTH = ("", query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name)
#: Seconds between closing the refusal windows that ended (refusal_records.py).
REFUSAL_FLUSH_SECONDS = 1.0
#: Seconds the access-record log gets to write what is queued and its last checkpoint.
STOP_SECONDS = 5.0


@dataclass
class FleetApiHandle:
    api: FleetApi
    query_address: str
    http_address: str
    records: RecordLog
    counters: Counter[str]


def page_token_key(config: FleetApiConfig) -> bytes | None:
    if config.page_token_key_file is None:
        return None
    key = bytes.fromhex(config.page_token_key_file.read_text().strip())
    if len(key) not in (16, 24, 32):
        raise ValueError(f"{config.page_token_key_file}: a page-token key is 16, 24 or 32 bytes "
                         f"as hex (e.g. `openssl rand -hex 16`), got {len(key)}")
    return key


def access_log(config: FleetApiConfig) -> RecordLog:
    """The API's own record log: only access records (and its genesis and checkpoints)."""
    cap = config.access_log_max_bytes
    return RecordLog(config.api_data_dir / "records", cap, "batch",
                     load_or_create_signer(config.signing_key_file, config.api_data_dir),
                     # All of it but room for its checkpoints: these are its only records.
                     access_budget_bytes=cap - cap // 20,
                     segment_bytes=max(1024, min(64 << 20, cap // 16)))


class _Refusals(Collector):
    def __init__(self, counters: Counter[str]) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("vllm_audit_fleet_query_refused_calls",
                                     "Fleet API calls refused, by reason", labels=["reason"])
        for reason in REFUSALS:
            family.add_metric([reason], self.counters[f"auth_{reason}"])
        yield family
        yield CounterMetricFamily("vllm_audit_fleet_access_records",
                                  "Access records written to the API's record log",
                                  value=self.counters["meta_audit_records"])


@contextlib.asynccontextmanager
async def running_fleet_api(store: FleetStore, config: FleetApiConfig
                            ) -> AsyncIterator[FleetApiHandle]:
    tls = config.tls_cert is not None and config.tls_key is not None
    query_host = parse_address("query_address", config.query_address)[0]
    http_host, http_port = parse_address("api_http_address", config.api_http_address)
    check_listener(query_host, tls, config.allow_insecure_remote)
    check_listener(http_host, tls, config.allow_insecure_remote)
    prices = load_price_table(config.price_table_file)
    with DataDirLock(config.api_data_dir):
        tokens = load_token_table(config.auth_tokens_file, config.api_data_dir)
        records = access_log(config)
        records.end_replay()
        records.start()
        counters: Counter[str] = Counter()
        sink = RecordLogAuditSink(records, counters)
        auth = AuthInterceptor(tokens, counters, sink,
                               TokenBuckets(config.query_rate_per_token,
                                            2 * config.query_rate_per_token))
        api = FleetApi(store, PageTokens(page_token_key(config)), prices)
        server = grpc.aio.server(interceptors=[auth])
        # the ignore[no-untyped-call] below: grpcio-tools emits no hints for add_*_to_server
        findings = StoreFindings(store)
        query_pb2_grpc.add_QueryServiceServicer_to_server(  # type: ignore[no-untyped-call]
            QueryServicer(api, findings), server)
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        port = server.add_secure_port(config.query_address, server_credentials(
            config.tls_cert, config.tls_key, config.tls_client_ca)) \
            if config.tls_cert is not None and config.tls_key is not None \
            else server.add_insecure_port(config.query_address)
        registry = CollectorRegistry()
        registry.register(_Refusals(counters))
        registry.register(UsageCollector(
            lambda: store.aggregates(TrailQuery(), ("tenant", "model")), prices))
        runner = await _http(ManagementApi(api, auth.gate, findings).routes(), registry, http_host,
                             http_port, config)
        flusher: asyncio.Task[None] | None = None
        try:
            await server.start()
            for name in QUERY_HEALTH:
                await health.set(name, health_pb2.HealthCheckResponse.SERVING)
            flusher = asyncio.create_task(_flush_refusals(sink))
            bound_http = int(runner.addresses[0][1])
            logger.info("fleet query API: gRPC %s:%d, HTTP %s:%d, access records in %s",
                        query_host, port, http_host, bound_http, records.directory)
            yield FleetApiHandle(api, f"{query_host}:{port}", f"{http_host}:{bound_http}",
                                 records, counters)
        finally:
            if flusher is not None:
                flusher.cancel()
            await health.enter_graceful_shutdown()
            await server.stop(grace=1.0)
            await runner.cleanup()
            sink.flush(everything=True)
            await records.stop(STOP_SECONDS)
            records.close()


async def _http(routes: list[web.RouteDef], registry: CollectorRegistry, host: str, port: int,
                config: FleetApiConfig) -> web.AppRunner:
    async def metrics(_: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), *routes])
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    ssl_context = http_ssl_context(config.tls_cert, config.tls_key, config.tls_client_ca) \
        if config.tls_cert is not None and config.tls_key is not None else None
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner


async def _flush_refusals(sink: RecordLogAuditSink) -> None:
    while True:
        await asyncio.sleep(REFUSAL_FLUSH_SECONDS)
        try:
            sink.flush()
        except Exception as exc:  # never end the API over a refusal record; count it
            logger.exception("refusal records failed: %r", exc)
