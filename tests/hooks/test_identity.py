"""Who made a request, and from where the record knows it: the resolution order (API-key
mapping, then a trusted proxy's header, then the body's claim) and vLLM's own key decision.

Real ASGI calls: a Starlette app carrying vLLM's own AuthenticationMiddleware, added the way
`vllm serve --api-key` adds it, with the hook's AuditMiddleware outside it as `--middleware`
puts it; the events the middleware offers are converted to the wire messages the agent gets.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

from vllm_audit.v1 import events_pb2 as pb
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.errors import ERRORS
from vllm_hooks.events.raw_events import EventConverter
from vllm_hooks.middleware import AuditMiddleware
from vllm_hooks.runtime import HookRuntime

ALICE_KEY = "sk-alice-0123456789"       # mapped to a user and a tenant
SERVICE_KEY = "sk-service-0123456789"   # mapped to a user only
PLAIN_KEY = "sk-plain-0123456789"       # accepted by vLLM, not in the mapping
PROXY = "10.0.0.7"                      # inside VLLM_AUDIT_TRUSTED_PROXIES
STRANGER = "198.51.100.9"               # outside it


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(autouse=True)
def strict_errors() -> Any:
    """A swallowed hook error fails the test instead of disappearing."""
    ERRORS.strict = True
    yield
    ERRORS.strict = False


@pytest.fixture
def settings(tmp_path: Path) -> HookSettings:
    mapping = tmp_path / "identities.yaml"
    mapping.write_text(
        "keys:\n"
        f"  - {{sha256: {sha(ALICE_KEY)}, user: alice, tenant: bank-a}}\n"
        f"  - {{sha256: {sha(SERVICE_KEY).upper()}, user: svc-batch}}\n")
    return HookSettings.from_env({
        "VLLM_AUDIT_ENABLED": "true", "VLLM_AUDIT_HMAC_KEY": "k",
        "VLLM_AUDIT_CAPTURE_CLIENT_IP": "full",
        "VLLM_AUDIT_IDENTITY_FILE": str(mapping),
        "VLLM_AUDIT_TRUSTED_PROXIES": "10.0.0.0/8",
        "VLLM_AUDIT_USER_HEADER": "X-Forwarded-User",
    })


async def completion(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"choices": [{"message": {"content": "hi"}}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 1}})


def serve(settings: HookSettings, api_keys: list[str]) -> tuple[Starlette, HookRuntime]:
    """The app as `vllm serve [--api-key ...] --middleware ...AuditMiddleware` builds it. The
    runtime is not started: what the middleware offers stays in its buffer for the test."""
    app = Starlette(routes=[Route("/v1/chat/completions", completion, methods=["POST"]),
                            Route("/invocations", completion, methods=["POST"])])
    if api_keys:  # vllm/entrypoints/serve/middleware/register.py: only with a key configured
        app.add_middleware(AuthenticationMiddleware, tokens=api_keys)
    runtime = HookRuntime(settings, "api_server")
    app.add_middleware(AuditMiddleware, runtime=runtime)
    return app, runtime


def call(app: Any, runtime: HookRuntime, peer: str, key: str | None = None,
         user: str | None = None, path: str = "/v1/chat/completions",
         **headers: str) -> pb.HttpRequest:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    if user is not None:
        body["user"] = user
    sent = {k.replace("_", "-"): v for k, v in headers.items()}
    if key is not None:
        sent["authorization"] = f"Bearer {key}"

    async def go() -> int:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://vllm") as client:
            response = await client.post(path, content=json.dumps(body), headers=sent)
            return response.status_code

    status = asyncio.run(go())
    (event,) = runtime.buffer.drain(10)
    http = EventConverter(runtime.settings, runtime.policy).to_proto(event).http
    assert http.status_code == status
    return http


def identity(http: pb.HttpRequest) -> tuple[str, str, str, str]:
    return (http.user, pb.IdentitySource.Name(http.user_source),
            http.tenant, pb.IdentitySource.Name(http.tenant_source))


def test_a_mapped_api_key_names_user_and_tenant_above_every_other_source(
        settings: HookSettings) -> None:
    app, rt = serve(settings, [ALICE_KEY, SERVICE_KEY, PLAIN_KEY])
    # Through a trusted proxy that names someone else, with a body claiming a third party:
    # the key decides, the claim is kept beside it.
    http = call(app, rt, PROXY, ALICE_KEY, user="mallory", x_tenant_id="bank-z",
                x_forwarded_user="bob")
    assert identity(http) == ("alice", "IDENTITY_SOURCE_API_KEY",
                              "bank-a", "IDENTITY_SOURCE_API_KEY")
    assert http.claimed_user == "mallory"
    assert http.auth_decision == pb.AUTH_STATUS_OK and http.auth_status == "ok"
    assert http.api_key_sha256 == sha(ALICE_KEY) and ALICE_KEY not in str(http)
    assert list(http.ignored_identity_headers) == []


def test_each_field_falls_to_the_next_source_on_its_own(settings: HookSettings) -> None:
    app, rt = serve(settings, [ALICE_KEY, SERVICE_KEY, PLAIN_KEY])
    # The service key maps a user only (its hash was written in upper case): the tenant comes
    # from the trusted proxy's header.
    http = call(app, rt, PROXY, SERVICE_KEY, user="whoever", x_tenant_id="bank-b")
    assert identity(http) == ("svc-batch", "IDENTITY_SOURCE_API_KEY",
                              "bank-b", "IDENTITY_SOURCE_PROXY_HEADER")
    # An unmapped key through the proxy: both from its headers, the body only claimed.
    http = call(app, rt, PROXY, PLAIN_KEY, user="carol", x_tenant_id="bank-c",
                x_forwarded_user="dave", x_forwarded_for="203.0.113.5")
    assert identity(http) == ("dave", "IDENTITY_SOURCE_PROXY_HEADER",
                              "bank-c", "IDENTITY_SOURCE_PROXY_HEADER")
    assert (http.claimed_user, http.client_ip) == ("carol", "203.0.113.5")
    # The proxy sends no identity headers: the body's user, marked claimed; no tenant.
    http = call(app, rt, PROXY, PLAIN_KEY, user="carol")
    assert identity(http) == ("carol", "IDENTITY_SOURCE_CLAIMED", "", "IDENTITY_SOURCE_NONE")
    # Nothing at all.
    http = call(app, rt, PROXY, PLAIN_KEY)
    assert identity(http) == ("", "IDENTITY_SOURCE_NONE", "", "IDENTITY_SOURCE_NONE")


def test_identity_headers_from_an_untrusted_peer_are_ignored_and_named(
        settings: HookSettings) -> None:
    app, rt = serve(settings, [PLAIN_KEY])
    http = call(app, rt, STRANGER, PLAIN_KEY, user="eve", x_tenant_id="bank-a",
                x_forwarded_user="alice", x_forwarded_for="10.0.0.1")
    assert identity(http) == ("eve", "IDENTITY_SOURCE_CLAIMED", "", "IDENTITY_SOURCE_NONE")
    assert http.client_ip == STRANGER
    assert list(http.ignored_identity_headers) == [
        "x-tenant-id", "x-forwarded-user", "x-forwarded-for"]
    # Without any trusted proxy configured, every peer is untrusted, the loopback too.
    plain = HookSettings(enabled=True, hmac_key=b"k", capture_client_ip="full")
    app, rt = serve(plain, [])
    http = call(app, rt, "127.0.0.1", user="eve", x_tenant_id="bank-a")
    assert identity(http) == ("eve", "IDENTITY_SOURCE_CLAIMED", "", "IDENTITY_SOURCE_NONE")
    assert list(http.ignored_identity_headers) == ["x-tenant-id"]


def test_the_trust_decision_rests_on_the_tcp_peer_even_behind_uvicorns_proxy_headers(
        settings: HookSettings) -> None:
    """`vllm serve` runs uvicorn with proxy headers on, trusting 127.0.0.1 by default: it puts
    an X-Forwarded-For address into scope["client"] before any middleware runs. A loopback
    caller naming an address inside VLLM_AUDIT_TRUSTED_PROXIES must not become a trusted proxy
    by it (found on the real server: it did)."""
    app, rt = serve(settings, [])
    served = ProxyHeadersMiddleware(app, trusted_hosts="127.0.0.1")  # as uvicorn wraps it
    http = call(served, rt, "127.0.0.1", user="eve", x_tenant_id="bank-a",
                x_forwarded_user="alice", x_forwarded_for="10.1.2.3")
    assert identity(http) == ("eve", "IDENTITY_SOURCE_CLAIMED", "", "IDENTITY_SOURCE_NONE")
    assert http.client_ip == "127.0.0.1"
    assert list(http.ignored_identity_headers) == [
        "x-tenant-id", "x-forwarded-user", "x-forwarded-for"]
    # A proxy the hook does trust, on the loopback: its headers and forwarded client count.
    local = HookSettings.from_env({
        "VLLM_AUDIT_ENABLED": "true", "VLLM_AUDIT_HMAC_KEY": "k",
        "VLLM_AUDIT_CAPTURE_CLIENT_IP": "full", "VLLM_AUDIT_TRUSTED_PROXIES": "127.0.0.1"})
    app, rt = serve(local, [])
    served = ProxyHeadersMiddleware(app, trusted_hosts="127.0.0.1")
    http = call(served, rt, "127.0.0.1", user="eve", x_tenant_id="bank-a",
                x_forwarded_for="10.1.2.3")
    assert identity(http) == ("eve", "IDENTITY_SOURCE_CLAIMED",
                              "bank-a", "IDENTITY_SOURCE_PROXY_HEADER")
    assert http.client_ip == "10.1.2.3"


def test_auth_status_is_what_vllm_decided(settings: HookSettings) -> None:
    app, rt = serve(settings, [PLAIN_KEY])
    http = call(app, rt, STRANGER, "not-the-key", user="eve")
    assert (http.status_code, http.auth_decision, http.auth_status) == (
        401, pb.AUTH_STATUS_REJECTED, "rejected")
    http = call(app, rt, STRANGER, user="eve")  # no key at all
    assert (http.status_code, http.auth_decision) == (401, pb.AUTH_STATUS_REJECTED)
    assert call(app, rt, STRANGER, PLAIN_KEY).auth_decision == pb.AUTH_STATUS_OK
    # A path vLLM does not guard: its key check never ran, whatever the request carried.
    http = call(app, rt, STRANGER, "not-the-key", path="/invocations")
    assert (http.status_code, http.auth_decision, http.auth_status) == (
        200, pb.AUTH_STATUS_NONE, "none")
    # vLLM started without --api-key: a bearer token is carried but nobody checked it; a
    # mapped key still names its holder (knowing a listed key is proof of holding it).
    app, rt = serve(settings, [])
    http = call(app, rt, STRANGER, ALICE_KEY)
    assert (http.status_code, http.auth_decision, http.auth_status) == (
        200, pb.AUTH_STATUS_NONE, "none")
    assert identity(http) == ("alice", "IDENTITY_SOURCE_API_KEY",
                              "bank-a", "IDENTITY_SOURCE_API_KEY")


@pytest.mark.parametrize(("content", "message"), [
    ("keys:\n  - {sha256: abc, user: a}\n", "entry 0: sha256 must be 64 hex digits"),
    (f"- {{sha256: {'a' * 64}}}\n", "entry 0: needs a user, a tenant or both"),
    (f"- {{key: sk-secret, sha256: {'a' * 64}, user: a}}\n", "unknown keys ['key']"),
    (f"- {{sha256: {'a' * 64}, user: a}}\n- {{sha256: {'A' * 64}, user: b}}\n",
     "entry 1: sha256 aaaaaaaaaaaa… appears twice"),
    ("keys: [\n", "not valid YAML"),
    ("{}\n", "expected a non-empty list"),
    (f"- {{sha256: {'a' * 64}, user: [x]}}\n", "entry 0: user must be a string"),
])
def test_a_bad_mapping_file_is_an_error_naming_the_variable(tmp_path: Path, content: str,
                                                            message: str) -> None:
    path = tmp_path / "ids.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"^VLLM_AUDIT_IDENTITY_FILE=") as caught:
        HookSettings.from_env({"VLLM_AUDIT_IDENTITY_FILE": str(path)})
    assert message in str(caught.value)


def test_mapping_files_in_json_and_missing_ones(tmp_path: Path) -> None:
    path = tmp_path / "ids.json"
    path.write_text(json.dumps([{"sha256": sha(ALICE_KEY), "tenant": "bank-a"}]))
    s = HookSettings.from_env({"VLLM_AUDIT_IDENTITY_FILE": str(path)})
    assert (s.identities[sha(ALICE_KEY)].user, s.identities[sha(ALICE_KEY)].tenant) == (
        "", "bank-a")
    assert sha(ALICE_KEY) not in repr(s)
    path.write_text("[{\"sha256\": 1")
    with pytest.raises(ValueError, match=r"VLLM_AUDIT_IDENTITY_FILE=.*not valid JSON"):
        HookSettings.from_env({"VLLM_AUDIT_IDENTITY_FILE": str(path)})
    with pytest.raises(ValueError, match=r"VLLM_AUDIT_IDENTITY_FILE=.*cannot read it"):
        HookSettings.from_env({"VLLM_AUDIT_IDENTITY_FILE": str(tmp_path / "absent.yaml")})
    with pytest.raises(ValueError, match="VLLM_AUDIT_USER_HEADER='x user' is not an HTTP"):
        HookSettings.from_env({"VLLM_AUDIT_USER_HEADER": "x user"})


def test_a_bad_mapping_file_stops_vllm_at_start_up(tmp_path: Path) -> None:
    from tests.hooks.test_register import run_python

    path = tmp_path / "ids.yaml"
    path.write_text("- {sha256: not-a-hash, user: a}\n")
    out = run_python("import vllm_hooks\nvllm_hooks.register()\nprint('served')\n",
                     VLLM_AUDIT_ENABLED="true", VLLM_AUDIT_IDENTITY_FILE=str(path))
    assert out.returncode != 0 and "served" not in out.stdout
    assert "AuditStartupError" in out.stderr
    assert f"VLLM_AUDIT_IDENTITY_FILE={path}: entry 0: sha256 must be 64 hex" in out.stderr
