"""The middleware gives vLLM an id of its own for every request; the client's X-Request-Id
is a claim kept beside it and handed back in the response. Real middleware, a real ASGI app
that echoes the header the way vLLM's --enable-request-id-headers does."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest

from vllm_hooks.http.identity import IdentityConfig
from vllm_hooks.middleware import _RequestAudit

Message = MutableMapping[str, Any]


async def echo_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    await receive()
    seen = dict(scope["headers"])[b"x-request-id"]
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"x-request-id", seen)]})
    await send({"type": "http.response.body", "body": b"{}", "more_body": False})


async def call(headers: list[tuple[bytes, bytes]]) -> tuple[_RequestAudit, list[Message]]:
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": headers, "client": ("10.0.0.1", 5555)}
    audit = _RequestAudit(scope)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b'{"model": "m"}', "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await echo_app(audit.scope, audit.wrap_receive(receive), audit.wrap_send(send))
    return audit, sent


def test_one_client_header_on_two_requests_gives_two_ids_and_the_client_its_own_back() -> None:
    async def both() -> list[tuple[_RequestAudit, list[Message]]]:
        return [await call([(b"x-request-id", b"client-chosen")]) for _ in range(2)]

    (a, sent_a), (b, _) = asyncio.run(both())
    assert a.request_id != b.request_id
    assert "client-chosen" not in (a.request_id, b.request_id)
    # vLLM saw our id only; the client claim is recorded.
    assert dict(a.scope["headers"])[b"x-request-id"] == a.request_id.encode()
    assert a.fields()["client_request_id"] == "client-chosen"
    # The client gets back the id it sent, not the trail id.
    assert dict(sent_a[0]["headers"])[b"x-request-id"] == b"client-chosen"


def test_without_a_client_header_no_trail_id_leaks_into_the_response() -> None:
    audit, sent = asyncio.run(call([]))
    assert audit.fields()["client_request_id"] == ""
    assert b"x-request-id" not in dict(sent[0]["headers"])


def test_x_forwarded_for_counts_only_through_trusted_proxies() -> None:
    from vllm_hooks.config.client_address import client_address, parse_networks

    trusted = parse_networks("VLLM_AUDIT_TRUSTED_PROXIES", "10.0.0.0/8, fd00::/8")
    spoofed = "6.6.6.6, 203.0.113.7"
    # An untrusted peer: its header is ignored, whatever it claims.
    assert client_address("198.51.100.9", spoofed, trusted) == "198.51.100.9"
    # Through our proxies: the nearest hop that is not ours is the client, not a spoofed
    # address the client put at the left of the header itself.
    assert client_address("10.0.0.1", spoofed + ", 10.2.3.4", trusted) == "203.0.113.7"
    assert client_address("10.0.0.1", "", trusted) == "10.0.0.1"
    # No trusted proxies configured: the peer stands.
    assert client_address("10.0.0.1", spoofed, ()) == "10.0.0.1"
    with pytest.raises(ValueError, match="VLLM_AUDIT_TRUSTED_PROXIES: 'nope'"):
        parse_networks("VLLM_AUDIT_TRUSTED_PROXIES", "10.0.0.0/8,nope")


def test_the_middleware_records_the_client_behind_a_trusted_proxy() -> None:
    from vllm_hooks.config.client_address import parse_networks

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.7")],
             "client": ("10.0.0.1", 5555)}
    trusted = IdentityConfig(trusted_proxies=parse_networks("VLLM_AUDIT_TRUSTED_PROXIES",
                                                            "10.0.0.0/8"))
    assert _RequestAudit(scope, trusted).fields()["client_ip"] == "203.0.113.7"
    untrusted = _RequestAudit(scope).fields()
    assert untrusted["client_ip"] == "10.0.0.1"
    assert untrusted["ignored_identity_headers"] == ["x-forwarded-for"]


def test_rfc_7239_forwarded_counts_like_x_forwarded_for_through_trusted_proxies() -> None:
    from vllm_hooks.config.client_address import forwarded_for, parse_networks

    assert forwarded_for('for=192.0.2.60;proto=http;by=10.0.0.1, For="[2001:db8::17]:4711", '
                         "for=198.51.100.4:8080") == "192.0.2.60, 2001:db8::17, 198.51.100.4"
    forwarded = [(b"forwarded", b"for=6.6.6.6, for=203.0.113.7;proto=https")]
    scope = {"type": "http", "method": "POST", "path": "/v1/completions",
             "headers": forwarded, "client": ("10.0.0.1", 5555)}
    trusted = IdentityConfig(trusted_proxies=parse_networks("VLLM_AUDIT_TRUSTED_PROXIES",
                                                            "10.0.0.0/8"))
    assert _RequestAudit(scope, trusted).fields()["client_ip"] == "203.0.113.7"
    untrusted = _RequestAudit(scope).fields()
    assert (untrusted["client_ip"], untrusted["ignored_identity_headers"]) == (
        "10.0.0.1", ["forwarded"])
