"""Who made a request, and how the record knows it.

User and tenant are each taken from the most trusted source that gives one:

1. `api_key` — the request's API key, through the mapping file (`VLLM_AUDIT_IDENTITY_FILE`,
   identity_file.py; it holds the keys' SHA-256, never the keys). Knowing a key whose hash
   is listed is proof enough of holding it, whether or not vLLM checks keys itself.
2. `proxy_header` — `VLLM_AUDIT_USER_HEADER` / `VLLM_AUDIT_TENANT_HEADER`, believed only when
   the socket peer is a trusted proxy (`VLLM_AUDIT_TRUSTED_PROXIES`), which must set them and
   drop what clients send. From any other peer these headers (and X-Forwarded-For,
   Forwarded) are
   ignored, and their names go into the record's `ignored_identity_headers`: a spoofing
   attempt is visible, never believed.
3. `claimed` — the body's `user` field (user only): whatever the caller wrote.

The body's `user` is kept as `claimed_user` whatever the source of `user`: keep what the
client claims as a field, attribute on what was established.

`auth_status` says what vLLM's own API-key check (`--api-key` / `VLLM_API_KEY`) decided; the
vllm room reads whether vLLM runs that check for a request (vllm.api_key_check).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vllm_audit.v1 import events_pb2 as pb
from vllm_hooks.config.client_address import client_address, forwarded_for, is_trusted

if TYPE_CHECKING:
    from vllm_hooks.config.client_address import Network
    from vllm_hooks.config.identity_file import KeyIdentity
    from vllm_hooks.config.settings import HookSettings

#: ASGI scope key holding the TCP peer as the server saw it, kept before uvicorn's
#: proxy-headers middleware rewrites scope["client"] (vllm.socket_peer_patch).
SOCKET_PEER_KEY = "vllm_audit.socket_peer"

API_KEY = pb.IDENTITY_SOURCE_API_KEY
PROXY_HEADER = pb.IDENTITY_SOURCE_PROXY_HEADER
CLAIMED = pb.IDENTITY_SOURCE_CLAIMED
NONE = pb.IDENTITY_SOURCE_NONE

#: HttpRequest.auth_status (the string older agents read): the enum's name, lower case.
AUTH_STATUS_TEXT = {v.number: ("" if v.number == 0 else
                               v.name.removeprefix("AUTH_STATUS_").lower())
                    for v in pb.AuthStatus.DESCRIPTOR.values}
#: Statuses that mean the caller was refused as unauthenticated or forbidden.
REJECTED_STATUSES = frozenset({401, 403})


@dataclass(frozen=True)
class IdentityConfig:
    keys: Mapping[str, KeyIdentity] = field(default_factory=dict)
    user_header: bytes = b""
    tenant_header: bytes = b""
    trusted_proxies: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls, s: HookSettings) -> IdentityConfig:
        return cls(s.identities, s.user_header.encode("latin-1"),
                   s.tenant_header.encode("latin-1"), s.trusted_proxies)

    @property
    def forwarding_headers(self) -> tuple[bytes, ...]:
        """Headers only a trusted proxy may set: named when an untrusted peer sends them."""
        return tuple(h for h in (self.tenant_header, self.user_header, b"x-forwarded-for",
                                 b"forwarded") if h)


class RequestIdentity:
    """Read from the headers when a request starts (cheap: a few dict lookups, an address
    parse only when trusted proxies are configured); resolved after the response."""

    __slots__ = ("client_ip", "config", "ignored", "proxy_tenant", "proxy_user")

    def __init__(self, config: IdentityConfig, peer: str, headers: Mapping[bytes, bytes]) -> None:
        self.config = config
        trusted = config.trusted_proxies
        self.proxy_user = self.proxy_tenant = ""
        self.ignored: list[str] = []
        if trusted and is_trusted(peer, trusted):
            if config.user_header:
                self.proxy_user = headers.get(config.user_header, b"").decode("latin-1").strip()
            if config.tenant_header:
                self.proxy_tenant = headers.get(config.tenant_header,
                                                b"").decode("latin-1").strip()
            hops = headers.get(b"x-forwarded-for", b"").decode("latin-1")
            if not hops and b"forwarded" in headers:
                hops = forwarded_for(headers[b"forwarded"].decode("latin-1"))
            self.client_ip = client_address(peer, hops, trusted)
        else:
            self.client_ip = peer
            self.ignored = [h.decode("latin-1") for h in config.forwarding_headers
                            if h in headers]

    def resolve(self, api_key_sha256: str, claimed_user: str) -> dict[str, Any]:
        """The HttpRequest identity fields."""
        mapped = self.config.keys.get(api_key_sha256) if api_key_sha256 else None
        user, user_source = _first((mapped.user if mapped else "", API_KEY),
                                   (self.proxy_user, PROXY_HEADER), (claimed_user, CLAIMED))
        tenant, tenant_source = _first((mapped.tenant if mapped else "", API_KEY),
                                       (self.proxy_tenant, PROXY_HEADER))
        return {"user": user, "user_source": user_source, "tenant": tenant,
                "tenant_source": tenant_source, "claimed_user": claimed_user,
                "ignored_identity_headers": self.ignored}


def _first(*candidates: tuple[str, int]) -> tuple[str, int]:
    for value, source in candidates:
        if value:
            return value, source
    return "", NONE


def auth_decision(status: int, key_checked: bool | None) -> int:
    """AuthStatus from the response status and whether vLLM checks a key for this request
    (None: the hook could not tell)."""
    if status in REJECTED_STATUSES:
        return pb.AUTH_STATUS_REJECTED
    if key_checked is None:
        return pb.AUTH_STATUS_UNSPECIFIED
    return pb.AUTH_STATUS_OK if key_checked else pb.AUTH_STATUS_NONE
