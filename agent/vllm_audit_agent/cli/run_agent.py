"""`vllm-audit agent`: build the config (flags over env vars), check the ports, run until a
signal, and turn start-up failures into one line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket

from vllm_audit_agent.config import OPTIONS, AgentConfig, parse_address
from vllm_audit_agent.options import from_args
from vllm_audit_agent.storage.datadir import DataDirLocked


class AgentStartError(Exception):
    """The agent could not start; the message is the whole story (one line, no traceback)."""


def run_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = AgentConfig.from_env(**from_args(OPTIONS, args))
    for field, address in (("--query-address", config.query_address),
                           ("--http-address", config.http_address)):
        check_bindable(field, address)
    # Imported when the agent runs, so the client commands do not load the server and its
    # dependencies.
    from vllm_audit_agent.server import serve

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # A future, not Event.wait(): a coroutine never awaited (start-up failed) warns on exit.
        stop: asyncio.Future[None] = loop.create_future()

        def request_stop() -> None:
            if not stop.done():
                stop.set_result(None)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, request_stop)
        await serve(config, stop)

    try:
        asyncio.run(main())
    except OSError as exc:  # a port in use, a data dir it may not write
        raise AgentStartError(f"agent cannot start: {exc}") from exc
    except DataDirLocked as exc:  # another agent has this data directory
        raise AgentStartError(f"agent cannot start: {exc}") from None
    except RuntimeError as exc:
        # grpc reports a bind failure as a bare RuntimeError("Failed to bind to address ...").
        if "bind" not in str(exc):
            raise
        raise AgentStartError(f"agent cannot start: {str(exc).split(';')[0]} (address in use?)") \
            from exc
    return 0


def check_bindable(field: str, address: str) -> None:
    """Fail before start-up with the OS's reason: gRPC only says "Failed to bind" (after a
    core log line), and a half-started agent is worse than none."""
    host, port = parse_address(field, address)
    if port == 0:
        return
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as both servers do
            probe.bind(sockaddr)
    except OSError as exc:
        raise AgentStartError(f"agent cannot listen on {field}={address}: "
                              f"{exc.strerror or exc}") from None
