"""Transport security of the agent's listeners: which plaintext listener is refused, and
the TLS (or mutual TLS) credentials of the gRPC query listener and the HTTP port.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import grpc


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or a wildcard (0.0.0.0, [::]) reaches beyond this machine


def check_listener(host: str, tls: bool, allow_insecure_remote: bool) -> None:
    """Refuses a plaintext query listener reachable from other machines unless asked for."""
    if tls or allow_insecure_remote or is_loopback(host):
        return
    raise ValueError(
        f"query address {host!r} is reachable beyond this machine and TLS is not configured: "
        "tokens and audit records would cross the network in the clear. Configure --tls-cert "
        "and --tls-key, listen on 127.0.0.1, or pass --allow-insecure-remote (e.g. behind a "
        "service mesh that encrypts)")


def http_ssl_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The HTTP port's TLS, from the same files as the gRPC listener's: TLS 1.2 or later,
    client certificates from `client_ca` required when it is given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS for the query listener; with `client_ca`, mutual TLS (a client cert is required)."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )
