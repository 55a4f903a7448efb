"""The middleware keeps the caller's W3C `traceparent` (so the record's OTLP span joins the
caller's trace), and only a well-formed one. Real middleware, a real ASGI app."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest

from vllm_hooks.http.trace_context import traceparent
from vllm_hooks.middleware import _RequestAudit

Message = MutableMapping[str, Any]
GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}", "more_body": False})


def recorded(headers: list[tuple[bytes, bytes]]) -> str:
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": headers, "client": ("127.0.0.1", 5555)}
    audit = _RequestAudit(scope)

    async def receive() -> Message:
        return {"type": "http.request", "body": b'{"model": "m"}', "more_body": False}

    async def send(message: Message) -> None:
        return None

    asyncio.run(app(audit.scope, audit.wrap_receive(receive), audit.wrap_send(send)))
    value = audit.fields()["traceparent"]
    assert isinstance(value, str)
    return value


def test_the_request_event_carries_the_callers_traceparent() -> None:
    assert recorded([(b"traceparent", GOOD.encode())]) == GOOD
    # Header names arrive in any case from some servers.
    assert recorded([(b"Traceparent", GOOD.encode())]) == GOOD
    assert recorded([]) == ""


@pytest.mark.parametrize("header", [
    b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   # upper case is invalid
    b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",   # zero trace id
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   # zero span id
    b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   # forbidden version
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  # v00 has four fields
    b"00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",     # short trace id
    b"'; DROP TABLE x; --",
    b"",
])
def test_a_malformed_traceparent_is_dropped_not_kept(header: bytes) -> None:
    assert traceparent(header) == ""
    assert recorded([(b"traceparent", header)]) == ""


def test_a_later_version_keeps_its_first_four_fields() -> None:
    assert traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future") == (
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
