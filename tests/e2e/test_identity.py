"""Identity on the real engine: `vllm serve` without --api-key, the hook with an API-key mapping
file and a trusted-proxy range the test client is not in, the real agent.

- a mapped API key gives its user and tenant, source api_key;
- the tenant and user headers from that untrusted peer are ignored, and named in the record;
- the body's `user` is kept as a claim (and is the user when nothing better is known);
- auth_status is `none`: vLLM checks no key, whatever the request carries.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from harness import procs
from tests.e2e.conftest import Agent, agent_process
from tests.e2e.helpers import FINAL_STATES, wait_for_trail
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2

pytestmark = pytest.mark.vllm

ALICE_KEY = "sk-alice-identity-0123456789"


@pytest.fixture(scope="module")
def identity_agent(e2e_tmp: Path) -> Iterator[Agent]:
    yield from agent_process(e2e_tmp, "identity-agent", None)


@pytest.fixture(scope="module")
def open_server(tiny_model: Path, e2e_tmp: Path, identity_agent: Agent) -> Iterator[str]:
    """No --api-key; only 10.0.0.0/8 is a trusted proxy, so the loopback client is not one."""
    mapping = e2e_tmp / "identities.yaml"
    sha = hashlib.sha256(ALICE_KEY.encode()).hexdigest()
    mapping.write_text(f"keys:\n  - sha256: {sha}\n    user: alice\n    tenant: bank-a\n")
    proc, base = procs.start_vllm_server(
        tiny_model, e2e_tmp, identity_agent.socket, None,
        VLLM_AUDIT_IDENTITY_FILE=str(mapping), VLLM_AUDIT_TRUSTED_PROXIES="10.0.0.0/8",
        VLLM_AUDIT_USER_HEADER="x-forwarded-user")
    try:
        yield base
    finally:
        proc.stop()


def _final(t: query_pb2.GetTrailResponse) -> bool:
    return t.summary.state in FINAL_STATES and t.summary.status_code != 0


def _chat(base: str, key: str, user: str, headers: dict[str, str]) -> str:
    request_id = uuid.uuid4().hex
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)
    client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "who am I"}], max_tokens=4,
        temperature=0, user=user, extra_headers={"X-Request-Id": request_id, **headers})
    return request_id


def test_identity_sources_and_auth_on_a_server_without_api_key(
        open_server: str, identity_agent: Agent) -> None:
    # The mapped key wins over the body's claim and over a tenant header nobody vouches for.
    rid = _chat(open_server, ALICE_KEY, "mallory", {"X-Tenant-Id": "bank-z"})
    s = wait_for_trail(identity_agent.query, rid, _final).summary
    assert s.status_code == 200
    assert (s.user, s.user_source, s.tenant, s.tenant_source) == (
        "alice", pb.IDENTITY_SOURCE_API_KEY, "bank-a", pb.IDENTITY_SOURCE_API_KEY)
    assert s.claimed_user == "mallory"
    assert list(s.ignored_identity_headers) == ["x-tenant-id"]
    assert (s.auth_decision, s.auth_status) == (pb.AUTH_STATUS_NONE, "none")
    assert s.api_key_sha256 == hashlib.sha256(ALICE_KEY.encode()).hexdigest()

    # An unmapped key from an untrusted peer spoofing both identity headers: neither is
    # believed; the user is the body's claim, marked so, and the tenant is unknown.
    rid = _chat(open_server, "sk-anything", "eve",
                {"X-Tenant-Id": "bank-a", "X-Forwarded-User": "alice",
                 "X-Forwarded-For": "10.1.2.3"})
    s = wait_for_trail(identity_agent.query, rid, _final).summary
    assert (s.user, s.user_source, s.tenant, s.tenant_source) == (
        "eve", pb.IDENTITY_SOURCE_CLAIMED, "", pb.IDENTITY_SOURCE_NONE)
    assert list(s.ignored_identity_headers) == ["x-tenant-id", "x-forwarded-user",
                                                "x-forwarded-for"]
    assert s.client_ip == "127.0.0.1"  # the peer: its X-Forwarded-For is not believed either
    assert (s.auth_decision, s.auth_status) == (pb.AUTH_STATUS_NONE, "none")
    assert len(s.engine_request_ids) == 1  # the engine really served it
