"""Session-wide real parts for the end-to-end tests: the tiny model, a Kafka-protocol broker,
the agent, an offline vLLM run (hook on and off) and a `vllm serve` with the hook.

Each is started once per session so the suite stays within CI's time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from harness import procs
from harness.kafka_broker import KafkaBroker
from harness.tiny_model import make_tiny_model
from tests.e2e.helpers import scrape
from tests.e2e.offline import run_offline
from vllm_audit.v1 import query_pb2, query_pb2_grpc
from vllm_audit_agent.cli.client import channel as query_channel

API_KEY = "test-key-0123456789"
OFFLINE_PROMPTS = 4
OFFLINE_MAX_TOKENS = 24


@dataclass
class Agent:
    proc: procs.Proc
    socket: Path
    query_address: str
    metrics_url: str
    channel: grpc.Channel

    @property
    def query(self) -> query_pb2_grpc.QueryServiceStub:
        return query_pb2_grpc.QueryServiceStub(self.channel)

    @property
    def control(self) -> query_pb2_grpc.ControlServiceStub:
        return query_pb2_grpc.ControlServiceStub(self.channel)


@pytest.fixture(scope="session")
def e2e_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama")


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaBroker]:
    with KafkaBroker() as broker:
        yield broker


def agent_process(tmp: Path, name: str, kafka_bootstrap: str | None) -> Iterator[Agent]:
    """An agent process for a fixture to yield from; checks for swallowed errors at the end."""
    sock_dir = tmp / name
    sock_dir.mkdir(exist_ok=True)
    socket_path = sock_dir / "ingest.sock"
    proc, query, metrics = procs.start_agent(sock_dir, socket_path, kafka_bootstrap)
    channel = query_channel(query, procs.admin_token(sock_dir))
    try:
        handle = Agent(proc, socket_path, query, metrics, channel)
        yield handle
        assert_no_swallowed_errors(handle)
    finally:
        channel.close()
        proc.stop()


def assert_no_swallowed_errors(agent: Agent) -> None:
    """The hook and the agent swallow their own errors to protect vLLM; in tests each one
    is a failure. Hooks report theirs as `internal_error.<site>` drops in their gap markers."""
    stats = agent.query.GetStats(query_pb2.StatsRequest())
    hook_errors = {k: v for k, v in stats.hook_dropped_by_reason.items()
                   if k.startswith("internal_error")}
    assert not hook_errors, f"the hook swallowed errors: {hook_errors}"
    # Every site is exported from the start at 0; only a non-zero one is a swallowed error.
    agent_errors = [(labels, value) for labels, value in
                    scrape(agent.metrics_url).get("vllm_audit_internal_errors_total", []) if value]
    assert not agent_errors, f"the agent swallowed errors: {agent_errors}"


@pytest.fixture(scope="session")
def agent(e2e_tmp: Path, kafka: KafkaBroker) -> Iterator[Agent]:
    yield from agent_process(e2e_tmp, "agent", kafka.bootstrap)


@pytest.fixture(scope="session")
def offline_enabled(tiny_model: Path, e2e_tmp: Path, agent: Agent) -> list[dict[str, object]]:
    return run_offline(
        tiny_model, e2e_tmp, OFFLINE_PROMPTS, OFFLINE_MAX_TOKENS, "enabled",
        VLLM_AUDIT_ENABLED="true", VLLM_AUDIT_AGENT_ADDRESS=str(agent.socket),
        VLLM_AUDIT_LEVEL="full-with-allowed-sets", VLLM_AUDIT_INCLUDE_GRAMMAR="true",
    )


@pytest.fixture(scope="session")
def offline_disabled(tiny_model: Path, e2e_tmp: Path) -> list[dict[str, object]]:
    return run_offline(tiny_model, e2e_tmp, OFFLINE_PROMPTS, OFFLINE_MAX_TOKENS,
                             "disabled")


@pytest.fixture(scope="session")
def vllm_server(tiny_model: Path, e2e_tmp: Path, agent: Agent) -> Iterator[str]:
    # The tests' client stands in for a trusted proxy: its X-Tenant-Id is believed.
    proc, base = procs.start_vllm_server(tiny_model, e2e_tmp, agent.socket, API_KEY,
                                         VLLM_AUDIT_TRUSTED_PROXIES="127.0.0.1/32")
    try:
        yield base
    finally:
        proc.stop()
