"""Who the client is at the network level, behind proxies only when they are trusted.

The socket peer is the client unless the peer is a configured trusted proxy
(`VLLM_AUDIT_TRUSTED_PROXIES`, comma-separated CIDRs). Then `X-Forwarded-For` is read from
the right, skipping trusted proxies: the first address not in a trusted network is the
client. A header from an untrusted peer is never believed (anyone can send one), so without
trusted proxies the peer stands, whatever the request claims.
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
