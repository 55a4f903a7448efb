"""The agent in-process on real sockets: a Unix-socket ingest server, loopback gRPC query API
and HTTP endpoint, each bound to a fresh port, with an in-memory publisher to read back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from vllm_audit.v1 import query_pb2_grpc

from agent.config import AgentConfig
from agent.gpu import GpuReader
from agent.publisher import InMemoryPublisher
from agent.server import AgentHandle, running_agent


def agent_config(tmp: Path, **overrides: object) -> AgentConfig:
    values: dict[str, object] = {
        "ingest_socket": tmp / "ingest.sock", "query_address": "127.0.0.1:0",
        "http_address": "127.0.0.1:0", "data_dir": tmp / "data", "gpu": "none",
        "linger_seconds": 30.0,
    }
    values.update(overrides)
    return AgentConfig(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def agent(tmp: Path, gpu_reader: GpuReader | None = None,
                **overrides: object) -> AsyncIterator[tuple[AgentHandle, InMemoryPublisher]]:
    """Runs an agent; on a clean exit, fails if it swallowed any internal error."""
    publisher = InMemoryPublisher()
    async with running_agent(agent_config(tmp, **overrides), publisher=publisher,
                             gpu_reader=gpu_reader) as handle:
        yield handle, publisher
        assert not handle.state.errors, f"agent swallowed errors: {dict(handle.state.errors)}"


def query(handle: AgentHandle) -> query_pb2_grpc.QueryServiceStub:
    return query_pb2_grpc.QueryServiceStub(grpc.aio.insecure_channel(handle.query_address))
