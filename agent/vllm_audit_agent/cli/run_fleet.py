"""`vllm-audit fleet`: its command line (derived from FleetConfig's declarations), and running
the fleet service until a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from vllm_audit_agent.config import FLEET_OPTIONS, FleetConfig
from vllm_audit_agent.options import add_arguments, from_args


def add_fleet_parser(sub: Any) -> None:
    f = sub.add_parser(
        "fleet", help="store and verify every pod's records from Kafka (consumer group)",
        description="Run the fleet service: a Kafka consumer group over the agents' requests, "
                    "checkpoints and access topics that verifies each log as it streams and "
                    "keeps every record in ClickHouse (chDB embedded, or a server).")
    add_arguments(f, FLEET_OPTIONS)


def run_fleet(args: argparse.Namespace) -> int:
    # Imported when the fleet runs: the other commands need neither chDB nor aiohttp here.
    from vllm_audit_agent.fleet.service import serve

    config = FleetConfig.from_env(**from_args(FLEET_OPTIONS, args))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    asyncio.run(main())
    return 0
