"""The management API never answers 5xx to input: a property-based fuzz run against a real agent
process over real HTTP. Every route, with generated query parameters (known names and others,
values of any text, huge and negative integers), credentials (valid, missing, wrong, repeated)
and bodies (any JSON, any bytes); every answer must be a 2xx, or a 4xx with a JSON error that
names what was wrong, and the agent must log no traceback."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import procs

ROUTES = [("GET", "/api/v1/health"), ("GET", "/api/v1/stats"), ("GET", "/api/v1/trails"),
          ("GET", "/api/v1/trails/{id}"), ("GET", "/api/v1/export"),
          ("DELETE", "/api/v1/trails/{id}"), ("POST", "/api/v1/clear"),
          ("PUT", "/api/v1/level")]
KNOWN = ["model", "user", "tenant", "state", "finish_reason", "since", "until", "backend",
         "structured_only", "client_request_id", "x_request_id", "page_size", "page_token",
         "events", "event_offset", "event_limit"]

AUTHS = ["admin", "none", "wrong", "twice", "malformed"]
numbers = st.one_of(st.integers(min_value=-(2**70), max_value=2**70).map(str),
                    st.sampled_from(["2147483648", "4294967296", "-1", "0", "1e9", "NaN", ""]))
values = st.one_of(st.text(max_size=40), numbers,
                   st.sampled_from(["true", "false", "finished", "2026-01-01T00:00:00Z", "x" * 300]))
params = st.lists(st.tuples(st.one_of(st.sampled_from(KNOWN), st.text(min_size=1, max_size=10)),
                            values), max_size=5)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
bodies = st.one_of(st.none(), json_values.map(lambda v: json.dumps(v).encode()),
                   st.binary(max_size=64),
                   st.sampled_from([b'{"level": "summary"}', b'{"confirm": "delete-all-trails"}',
                                    b'{"level": 7}', b'{"confirm": null}']))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    proc, _, base = procs.start_agent(tmp, tmp / "ingest.sock", None, level="summary")
    try:
        yield base, procs.admin_token(tmp), tmp / "agent.log"
    finally:
        proc.stop()


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), query=params, body=bodies,
       trail_id=st.text(min_size=1, max_size=300).filter(lambda s: "/" not in s),
       auth=st.sampled_from(AUTHS))
def test_no_input_gets_a_5xx(served: tuple[str, str, Path], route: tuple[str, str],
                             query: list[tuple[str, str]], body: bytes | None, trail_id: str,
                             auth: str) -> None:
    base, token, _ = served
    method, path = route
    headers: list[tuple[str, str]] = {
        "admin": [("Authorization", f"Bearer {token}")], "none": [],
        "wrong": [("Authorization", "Bearer wrong")],
        "twice": [("Authorization", f"Bearer {token}"), ("Authorization", "Bearer wrong")],
        "malformed": [("Authorization", "Basic abc")],
    }[auth]
    url = base + path.replace("{id}", urllib.parse.quote(trail_id, safe=""))
    # Bad credentials come from other loopback addresses: their host backs off (backoff.py),
    # and the admin's calls, from 127.0.0.1, keep reaching every route.
    source = "127.0.0.1" if auth == "admin" else f"127.0.0.{2 + AUTHS.index(auth)}"
    with httpx.Client(timeout=30, transport=httpx.HTTPTransport(local_address=source)) as client:
        reply = client.request(method, url, params=query, content=body, headers=headers)
    assert reply.status_code < 500, (method, url, query, body, reply.status_code, reply.text)
    if reply.status_code >= 400:
        error: dict[str, Any] = reply.json()["error"]
        assert error["message"] and error["status"] == reply.status_code
    if auth == "admin":  # never backed off, never over the admin-exempt rate limit
        assert reply.status_code != 429 or "access records" in reply.text, reply.text


def test_the_fuzz_run_left_no_traceback(served: tuple[str, str, Path]) -> None:
    base, _, log = served
    # Runs after the fuzz test in this module: the agent is still up and logged no crash.
    assert procs.http_ok(base + "/readyz")
    assert "Traceback" not in log.read_text(errors="replace")
