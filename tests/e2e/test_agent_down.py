"""With the agent not running, vLLM serves every request and the hook counts what it drops.

A second `vllm serve` points its hook at a socket where no agent listens yet, with a small
buffer. After the requests, an agent starts on that socket: the hook connects, delivers what
it kept and its gap marker tells the agent exactly how many events it had to drop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from harness import procs
from tests.e2e.conftest import API_KEY
from vllm_audit.v1 import query_pb2, query_pb2_grpc

pytestmark = pytest.mark.vllm

BUFFER_EVENTS = 32
REQUESTS = 6


@pytest.fixture(scope="module")
def orphan_server(tiny_model: Path, e2e_tmp: Path) -> Iterator[tuple[str, Path]]:
    sock_dir = e2e_tmp / "late-agent"
    sock_dir.mkdir()
    socket_path = sock_dir / "ingest.sock"
    proc, base = procs.start_vllm_server(
        tiny_model, sock_dir, socket_path, API_KEY,
        VLLM_AUDIT_LEVEL="full", VLLM_AUDIT_BUFFER_EVENTS=str(BUFFER_EVENTS),
    )
    try:
        yield base, socket_path
    finally:
        proc.stop()


def test_vllm_serves_without_agent_and_drops_are_counted(
    orphan_server: tuple[str, Path], e2e_tmp: Path
) -> None:
    base, socket_path = orphan_server
    assert not socket_path.exists()
    client = openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    for i in range(REQUESTS):
        response = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"request {i}"}],
            max_tokens=16, temperature=0, response_format={"type": "json_object"},
        )
        assert response.choices[0].finish_reason in ("stop", "length")

    proc, query_address, _ = procs.start_agent(socket_path.parent, socket_path, None,
                                               level="full")
    try:

        from vllm_audit_agent.cli.client import channel as query_channel

        with query_channel(query_address, procs.admin_token(socket_path.parent)) as channel:
            query = query_pb2_grpc.QueryServiceStub(channel)
            deadline = time.monotonic() + 30
            stats = query.GetStats(query_pb2.StatsRequest())
            while time.monotonic() < deadline and not stats.hook_dropped_by_reason:
                time.sleep(0.1)
                stats = query.GetStats(query_pb2.StatsRequest())
            dropped = stats.hook_dropped_by_reason
            assert dropped.get("buffer_full", 0) > 0, dict(dropped)
            assert not [r for r in dropped if r.startswith("internal_error")], dict(dropped)
            # What the hook kept was delivered after it connected.
            assert stats.events_ingested > 0
    finally:
        proc.stop()
