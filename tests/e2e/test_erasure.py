"""Retention tiers and erasure through a real `vllm serve` (CPU), the hook (prompt and output
captured `full`) and a real agent process: a served request's content is sealed in its record;
`vllm-audit erase` makes one user's content unreadable in the query API and an opened export
while the other's stays readable and every record stays; content then expires at its own age
(seconds here) while the metadata stays; `vllm-audit verify` finds the log intact after both.
(Every other copy, on the agent alone: tests/agent/test_erasure.py.)"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

from harness import procs
from tests.e2e.conftest import Agent
from tests.e2e.helpers import FINAL_STATES, wait_for_trail
from vllm_audit.v1 import query_pb2
from vllm_audit_agent.cli.client import channel as query_channel

pytestmark = pytest.mark.vllm

#: A key lives RETENTION_S to PERIOD_S + RETENTION_S after its request: room for the
#: erasure on a loaded machine (two requests, three CLI runs) before the key expires.
PERIOD_S, RETENTION_S = 10, 40


@pytest.fixture(scope="module")
def shred_agent(e2e_tmp: Path) -> Iterator[tuple[Agent, Path]]:
    sock_dir = e2e_tmp / "erasure-agent"
    sock_dir.mkdir(exist_ok=True)
    socket_path = sock_dir / "ingest.sock"
    proc, query, metrics = procs.start_agent(sock_dir, socket_path, None, extra_args=(
        "--content-key-period", str(PERIOD_S),
        "--content-retention-days", repr(RETENTION_S / 86400)))
    channel = query_channel(query, procs.admin_token(sock_dir))
    try:
        yield Agent(proc, socket_path, query, metrics, channel), sock_dir
    finally:
        channel.close()
        proc.stop()


@pytest.fixture(scope="module")
def shred_server(tiny_model: Path, e2e_tmp: Path,
                 shred_agent: tuple[Agent, Path]) -> Iterator[str]:
    proc, base = procs.start_vllm_server(tiny_model, e2e_tmp / "erasure-agent",
                                         shred_agent[0].socket, None)
    try:
        yield base
    finally:
        proc.stop()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def ask(base: str, user: str) -> str:
    rid = uuid.uuid4().hex
    openai.OpenAI(base_url=base + "/v1", api_key="none").chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": f"secret of {user}"}],
        max_tokens=4, temperature=0, user=user,
        extra_headers={"X-Request-Id": rid, "X-Tenant-Id": "bank-a"})
    return rid


def records(data: Path, *more: str) -> list[dict[str, object]]:
    out = cli("export", "--data-dir", str(data), *more)
    assert out.returncode == 0, out.stderr
    return [orjson.loads(line) for line in out.stdout.splitlines()]


def test_erasure_and_content_expiry(shred_server: str,
                                    shred_agent: tuple[Agent, Path]) -> None:
    agent, sock_dir = shred_agent
    data = sock_dir / "agent-data"
    ids = {user: ask(shred_server, user) for user in ("alice", "bob")}
    trails = {user: wait_for_trail(agent.query, rid, lambda t: t.summary.state in FINAL_STATES)
              for user, rid in ids.items()}
    assert trails["bob"].summary.prompt.endswith("secret of bob")  # opened while the key lives
    stored = {r["user"]: r for r in records(data) if r.get("type") == "request"}
    assert stored["alice"]["prompt"] == "" and stored["alice"]["content"]["ciphertext"]
    assert all(b"secret of alice" not in f.read_bytes()
               for f in (data / "records").rglob("*") if f.is_file())

    # The subject is the (tenant, user) the hook recorded (a tenant header from a peer that
    # is not a trusted proxy is ignored): erased as the record names it.
    tenant = trails["alice"].summary.tenant
    token = procs.admin_token(sock_dir)
    erased = cli("erase", "--address", agent.query_address, "--token", token,
                 "--user", "alice", "--tenant", tenant, "--reason", "GDPR Art. 17 #1")
    assert erased.returncode == 0, erased.stderr
    assert orjson.loads(erased.stdout)["keys_destroyed"] == 1
    alice = agent.query.GetTrail(query_pb2.GetTrailRequest(
        request_id=trails["alice"].summary.request_id)).summary
    assert alice.content.erased and alice.content.erasure == "request" and alice.prompt == ""
    assert alice.user == "alice" and alice.completion_tokens > 0  # the metadata stays
    opened = {r["user"]: r for r in records(data, "--open-content")
              if r.get("type") == "request"}
    assert opened["alice"]["content"]["erased"]
    assert str(opened["bob"]["prompt"]).endswith("secret of bob")
    [erasure] = [r for r in records(data) if r.get("type") == "erasure"]
    assert erasure["cause"] == "request" and "alice" not in orjson.dumps(erasure).decode()
    verify = cli("verify", str(data / "records"), "--public-key", str(data / "signing.pub"),
                 "--allow-unsigned-tail")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # Bob's content expires at its own age (its period's end + the content retention).
    deadline = time.monotonic() + PERIOD_S + RETENTION_S + 30
    while time.monotonic() < deadline:
        bob = agent.query.GetTrail(query_pb2.GetTrailRequest(
            request_id=trails["bob"].summary.request_id)).summary
        if bob.content.erased:
            break
        time.sleep(0.5)
    assert bob.content.erasure == "expiry" and bob.prompt == "" and bob.user == "bob"
    kinds = [(r.get("type"), r.get("cause")) for r in records(data)]
    assert ("erasure", "expiry") in kinds and kinds.count(("request", None)) >= 2
    verify = cli("verify", str(data / "records"), "--public-key", str(data / "signing.pub"),
                 "--allow-unsigned-tail")
    assert verify.returncode == 0, verify.stdout + verify.stderr
