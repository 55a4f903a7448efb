"""`vllm-audit witness`: its command line, and running it until a signal.

    vllm-audit witness --key FILE --state-dir DIR --listen HOST:PORT --log-public-key PEM
                       [--log-public-key PEM ...] [--name NAME] [--create-key]
    vllm-audit witness --key FILE --name NAME --print-public-key
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from vllm_audit_agent.cli.run_agent import AgentStartError
from vllm_audit_agent.config import parse_address
from vllm_audit_agent.storage.datadir import DataDirLocked

DEFAULT_LISTEN = "127.0.0.1:9410"


def add_witness_parser(sub: Any) -> None:
    w = sub.add_parser(
        "witness", help="cosign a record log's checkpoints, refusing forks and rollbacks",
        description="Run a witness (C2SP tlog-witness): it cosigns each checkpoint of a "
                    "vllm-audit record log signed by a trusted log key once a consistency "
                    "proof shows the log only grew since the last one it cosigned; it refuses "
                    "(and counts, and logs) a fork or a rollback. Run it off the agent's pod.")
    w.add_argument("--key", type=Path, required=True,
                   help="the witness's Ed25519 private key, PEM or raw 32 bytes")
    w.add_argument("--state-dir", type=Path,
                   help="where it keeps the newest checkpoint cosigned per log (0700; one "
                        "witness per directory)")
    w.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"its HTTP port (default {DEFAULT_LISTEN})")
    w.add_argument("--log-public-key", type=Path, action="append", default=[], metavar="PEM",
                   help="a log's Ed25519 public key (PEM, raw or hex) whose checkpoints it "
                        "cosigns, for any origin vllm-audit/<log id> (repeatable)")
    w.add_argument("--name", default=None,
                   help="its key name in cosignatures (default vllm-audit-witness)")
    w.add_argument("--create-key", action="store_true",
                   help="make --key (0600) when the file does not exist")
    w.add_argument("--print-public-key", action="store_true",
                   help="print the public key (PEM) and note verifier key, then exit")


def run_witness(args: argparse.Namespace) -> int:
    # Imported when the witness runs, so the other commands do not load it.
    from vllm_audit_agent.witness.server import (
        DEFAULT_NAME,
        WitnessConfig,
        check_name,
        load_or_create_key,
        public_text,
        serve,
    )

    name = args.name or DEFAULT_NAME
    check_name(name)
    if args.print_public_key:
        key = load_or_create_key(args.key, args.create_key)
        sys.stdout.write(public_text(name, key.public_key()))
        return 0
    if args.state_dir is None:
        raise ValueError("witness: --state-dir is required")
    host, port = parse_address("--listen", args.listen)
    config = WitnessConfig(args.key, args.state_dir, host, port, tuple(args.log_public_key),
                           name, args.create_key)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[None] = loop.create_future()

        def request_stop() -> None:
            if not stop.done():
                stop.set_result(None)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, request_stop)
        await serve(config, stop)

    try:
        asyncio.run(main())
    except DataDirLocked as exc:  # another witness has this state directory
        raise AgentStartError(f"witness cannot start: {exc}") from None
    return 0
