"""`vllm-audit fleet` assembled: the store, the verifier with the trusted log keys, the consumer
group, and an HTTP port for /metrics and /healthz. Built once here from a FleetConfig; runs
until `stop` is set (the CLI sets it on SIGTERM/SIGINT). A stop commits nothing it has not
stored: what was in flight is re-delivered to the next consumer of the partition.

`beside(store)` is run around the consumer with the same store (opened as `store_class`): the
CLI passes the query API there (api/ sits above fleet/ in the layers, so this package cannot
name it), with `store_class=WatchedStore` so its watches see what the consumer stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from vllm_audit_agent.config import FleetConfig, parse_address
from vllm_audit_agent.detections.engine import RuleEngine
from vllm_audit_agent.detections.metrics import DetectionCollector
from vllm_audit_agent.detections.settings import load_settings
from vllm_audit_agent.fleet.consumer import FleetConsumer
from vllm_audit_agent.fleet.findings import FindingsTable, FleetDetections
from vllm_audit_agent.fleet.metrics import FleetCollector
from vllm_audit_agent.fleet.schema import Retention
from vllm_audit_agent.fleet.store import FleetStore
from vllm_audit_agent.fleet.verifier import FleetVerifier
from vllm_audit_agent.fleet.witnessing import WitnessPolicy
from vllm_audit_agent.records.chain import load_public_key

logger = logging.getLogger("vllm_audit.fleet")
KEY_SUFFIXES = (".pub", ".pem", ".key.pub", ".hex")


def load_keys(paths: Iterable[Path]) -> list[Ed25519PublicKey]:
    """Trusted log keys: each path a key file, or a directory of them."""
    keys = []
    for path in paths:
        files = sorted(p for p in path.iterdir() if p.suffix in KEY_SUFFIXES) \
            if path.is_dir() else [path]
        keys += [load_public_key(p) for p in files]
    return keys


def _http_app(registry: CollectorRegistry) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def witness_policy(config: FleetConfig) -> WitnessPolicy:
    keys = tuple(load_keys(config.witness_keys))
    return WitnessPolicy(keys, config.required_cosignatures if keys else 1,
                         config.unwitnessed_seconds)


def _detections(config: FleetConfig, store: FleetStore, retention: Retention
                ) -> FleetDetections | None:
    """The fleet-wide rules (--detections) and their findings table; a wrong thresholds file
    fails the start."""
    if not config.detections:
        return None
    engine = RuleEngine(load_settings(config.detection_rules_file), "fleet", dedupe=True)
    return FleetDetections(engine, FindingsTable(store.backend, config.database, retention))


#: What runs beside the consumer over its store (the query API), entered before it consumes.
Beside = Callable[[FleetStore], AbstractAsyncContextManager[object]]


async def serve(config: FleetConfig, stop: asyncio.Event, store_class: type[FleetStore] = FleetStore,
                beside: Beside | None = None) -> None:
    if not config.kafka_bootstrap:
        raise ValueError("fleet: --kafka-bootstrap is required")
    keys = load_keys(config.log_public_keys)
    retention = Retention(config.content_days, config.metadata_days, config.evidence_days)
    store = await asyncio.to_thread(store_class.open, config.store, config.database, retention)
    try:
        verifier = FleetVerifier(store, keys, config.gap_seconds, witnesses=witness_policy(config))
        await asyncio.to_thread(lambda: verifier.load(store.logs()))
        # load() verified what the store held past the saved heads: saved before consuming
        await asyncio.to_thread(lambda: store.save_logs(verifier.states(verifier.logs)))
        detections = await asyncio.to_thread(_detections, config, store, retention)
        consumer = FleetConsumer(config.kafka_bootstrap, config.kafka_topic_prefix,
                                 config.group_id, store, verifier, config.max_batch_records,
                                 detections=detections, max_wait_ms=config.max_batch_ms)
        registry = CollectorRegistry()
        registry.register(FleetCollector(verifier, consumer.stats))
        registry.register(DetectionCollector(detections.engine if detections else None))
        runner = web.AppRunner(_http_app(registry), access_log=None)
        await runner.setup()
        host, port = parse_address("http_address", config.http_address)
        await web.TCPSite(runner, host, port).start()
        logger.info("fleet: %d trusted log keys, %d logs known, consuming %s.* from %s as %s",
                    len(keys), len(verifier.logs), config.kafka_topic_prefix,
                    config.kafka_bootstrap, config.group_id)
        try:
            async with beside(store) if beside is not None else contextlib.nullcontext():
                await consumer.run(stop)
        finally:
            await runner.cleanup()
    finally:
        await asyncio.to_thread(store.close)
