"""Who the client is at the network level, behind proxies only when they are trusted.

The socket peer is the client unless the peer is a configured trusted proxy
(`VLLM_AUDIT_TRUSTED_PROXIES`, comma-separated CIDRs). Then `X-Forwarded-For` (or, without
it, the `for=` parameters of RFC 7239 `Forwarded`) is read from the right, skipping trusted
proxies: the first address not in a trusted network is the client. A header from an
untrusted peer is never believed (anyone can send one), so without trusted proxies the peer
stands, whatever the request claims. The peer is the TCP peer (identity.SOCKET_PEER_KEY), not
what uvicorn's own proxy handling made of it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(name: str, text: str) -> tuple[Network, ...]:
    """CIDRs (or single addresses) separated by commas; ValueError naming `name`."""
    networks: list[Network] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{name}: {part!r} is not an IP address or CIDR") from None
    return tuple(networks)


def is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(peer: str, forwarded_for: str, trusted: Sequence[Network]) -> str:
    """The client's address: `peer`, or through trusted proxies the nearest untrusted hop."""
    if not trusted or not is_trusted(peer, trusted):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not is_trusted(hop, trusted):
            return hop
    return peer  # every hop is a proxy of ours: the request started inside


def forwarded_for(value: str) -> str:
    """The `for=` addresses of an RFC 7239 `Forwarded` header, comma-separated like
    X-Forwarded-For, quotes, brackets and ports removed (`for="[2001:db8::1]:4711"`)."""
    hops = []
    for element in value.split(","):
        for pair in element.split(";"):
            key, _, raw = pair.strip().partition("=")
            if key.strip().lower() != "for":
                continue
            address = raw.strip().strip('"')
            if address.startswith("["):
                address = address[1:].partition("]")[0]
            elif address.count(":") == 1:
                address = address.partition(":")[0]  # IPv4 with a port
            hops.append(address)
    return ", ".join(hops)
