"""The management API never answers 5xx to input: a property-based fuzz run against a real agent
process over real HTTP, driven by the OpenAPI document that agent serves (/api/v1/openapi.json).

Every documented operation, with query parameters drawn from their documented schemas (within,
at and past each documented maximum) and others (unknown names, repeats, any text, huge and
negative integers), path parameters likewise, credentials (valid, missing, wrong, repeated,
malformed) and bodies (ones the documented body schema allows, any JSON, any bytes); plus
methods and paths the document does not list. Every answer must be a 2xx whose JSON matches
the documented answer schema, or a 4xx matching the documented error schema; the agent must
log no traceback. (schemathesis is not in the lock; hypothesis draws from the document.)"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import procs
from tests.support.openapi import Operation, Validators, body_of, operations, path_of, query_of

AUTHS = ["admin", "none", "wrong", "twice", "malformed"]
UNDOCUMENTED_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


@dataclass
class Served:
    base: str
    token: str
    log: Path
    ops: list[Operation]
    validators: Validators


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("fuzz")
    proc, _, base = procs.start_agent(tmp, tmp / "ingest.sock", None, level="summary")
    try:
        doc = httpx.get(base + "/api/v1/openapi.json", timeout=30).json()
        yield Served(base, procs.admin_token(tmp), tmp / "agent.log", operations(doc),
                     Validators(doc))
    finally:
        proc.stop()


def _headers(auth: str, token: str) -> list[tuple[str, str]]:
    return {
        "admin": [("Authorization", f"Bearer {token}")], "none": [],
        "wrong": [("Authorization", "Bearer wrong")],
        "twice": [("Authorization", f"Bearer {token}"), ("Authorization", "Bearer wrong")],
        "malformed": [("Authorization", "Basic abc")],
    }[auth]


def _send(served: Served, auth: str, method: str, path: str, query: list[tuple[str, str]],
          body: bytes | None) -> httpx.Response:
    # Bad credentials come from other loopback addresses: their host backs off (backoff.py),
    # and the admin's calls, from 127.0.0.1, keep reaching every route.
    source = "127.0.0.1" if auth == "admin" else f"127.0.0.{2 + AUTHS.index(auth)}"
    with httpx.Client(timeout=30, transport=httpx.HTTPTransport(local_address=source)) as client:
        return client.request(method, served.base + path, params=query, content=body,
                              headers=_headers(auth, served.token))


def _check_error(served: Served, reply: httpx.Response, what: Any) -> None:
    error: dict[str, Any] = reply.json()
    served.validators.error().validate(error)
    assert error["error"]["status"] == reply.status_code, what


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), auth=st.sampled_from(AUTHS))
def test_no_input_gets_a_5xx(served: Served, data: st.DataObject, auth: str) -> None:
    op = data.draw(st.sampled_from(served.ops))
    query = data.draw(query_of(op))
    body = data.draw(body_of(op))
    path = path_of(op, data.draw)
    reply = _send(served, auth, op.method, path, query, body)
    what = (op.method, path, query, body, reply.status_code, reply.text)
    assert reply.status_code < 500, what
    if reply.status_code >= 400:
        _check_error(served, reply, what)
    elif op.media_type == "application/json":
        served.validators.answer(op).validate(reply.json())
    if auth == "admin":  # never backed off, never over the admin-exempt rate limit
        assert reply.status_code != 429 or "access records" in reply.text, reply.text


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_what_the_document_does_not_list_is_not_served(served: Served,
                                                       data: st.DataObject) -> None:
    documented = {(op.method, op.path) for op in served.ops}
    paths = sorted({op.path for op in served.ops})
    if data.draw(st.booleans()):  # a documented path, a method it does not list
        path = data.draw(st.sampled_from(paths))
        method = data.draw(st.sampled_from(
            [m for m in UNDOCUMENTED_METHODS if (m, path) not in documented]))
        expected = 405
    else:  # a path under the API's prefix that no documented one matches
        segment = data.draw(st.text(min_size=1, max_size=20))
        path = "/api/v1/zz-" + urllib.parse.quote(segment, safe="")
        method = data.draw(st.sampled_from(UNDOCUMENTED_METHODS))
        expected = 404
    reply = _send(served, "admin", method, path.replace("{id}", "x"), [], None)
    assert reply.status_code == expected, (method, path, reply.status_code, reply.text)
    _check_error(served, reply, (method, path))


def test_the_fuzz_run_left_no_traceback(served: Served) -> None:
    # Runs after the fuzz tests in this module: the agent is still up and logged no crash.
    assert procs.http_ok(served.base + "/readyz")
    assert "Traceback" not in served.log.read_text(errors="replace")
