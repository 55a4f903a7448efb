"""`vllm-audit fleet`: its command line (derived from FleetConfig's and FleetApiConfig's
declarations), and running the fleet service — the consumer group and, over the same store,
the query API — until a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from typing import Any

from vllm_audit_agent.api.fleet_config import FLEET_API_OPTIONS, FleetApiConfig
from vllm_audit_agent.config import FLEET_OPTIONS, FleetConfig
from vllm_audit_agent.options import add_arguments, from_args, read_env


def add_fleet_parser(sub: Any) -> None:
    f = sub.add_parser(
        "fleet", help="store and verify every pod's records from Kafka (consumer group)",
        description="Run the fleet service: a Kafka consumer group over the agents' requests, "
                    "checkpoints and access topics that verifies each log as it streams and "
                    "keeps every record in ClickHouse (chDB embedded, or a server), and serves "
                    "the agent's query API (gRPC and HTTP) over every pod's records.")
    add_arguments(f, FLEET_OPTIONS)
    add_arguments(f, FLEET_API_OPTIONS)


def api_config(args: argparse.Namespace) -> FleetApiConfig:
    """Env vars first, then the flags given (as FleetConfig.from_env)."""
    values = read_env(FLEET_API_OPTIONS, os.environ)
    values.update({k: v for k, v in from_args(FLEET_API_OPTIONS, args).items() if v is not None})
    return FleetApiConfig(**values)


def run_fleet(args: argparse.Namespace) -> int:
    # Imported when the fleet runs: the other commands need neither chDB nor aiohttp here.
    from vllm_audit_agent.api.fleet_server import running_fleet_api
    from vllm_audit_agent.api.fleet_trails import WatchedStore
    from vllm_audit_agent.fleet.service import serve

    config = FleetConfig.from_env(**from_args(FLEET_OPTIONS, args))
    api = api_config(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop, store_class=WatchedStore,
                    beside=lambda store: running_fleet_api(store, api))

    asyncio.run(main())
    return 0
