"""The fleet query API's options (`vllm-audit fleet`, beside the consumer's FleetConfig): where
it listens, who may call it, what it prices, where its access records go.

Declared like the agent's (options.declare), so flags, environment variables and the README's
table derive from these; `python -m vllm_audit_agent.api.fleet_config` prints the table.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_audit_agent.config import parse_address
from vllm_audit_agent.options import Option, declare, markdown_table, not_negative, options_of


def _address(field: str, value: Any) -> None:
    parse_address(field, value)


@dataclass(frozen=True)
class FleetApiConfig:
    query_address: str = declare(
        "--query-address", "VLLM_AUDIT_FLEET_QUERY_ADDRESS", "127.0.0.1:50061",
        "the fleet's QueryService (gRPC): the agent's API over every pod's records",
        metavar="HOST:PORT", check=_address)
    api_http_address: str = declare(
        "--api-http-address", "VLLM_AUDIT_FLEET_API_HTTP_ADDRESS", "127.0.0.1:9421",
        "the same API as JSON over HTTP (/api/v1/...)", metavar="HOST:PORT", check=_address)
    api_data_dir: Path = declare(
        "--api-data-dir", "VLLM_AUDIT_FLEET_API_DATA_DIR", Path("/var/lib/vllm-audit-fleet-api"),
        "the API's own directory: its record log of access records (signed, hash-chained) and "
        "the admin.token made when no tokens file is given", metavar="DIR")
    auth_tokens_file: Path | None = declare(
        "--auth-tokens-file", "VLLM_AUDIT_FLEET_AUTH_TOKENS_FILE", None,
        "YAML/JSON list of {sha256, subject, role, tenant}, as the agent's", metavar="FILE",
        default_note="admin.token in --api-data-dir")
    signing_key_file: Path | None = declare(
        "--api-signing-key-file", "VLLM_AUDIT_FLEET_API_SIGNING_KEY_FILE", None,
        "Ed25519 key signing the access-record log's checkpoints (`vllm-audit keygen`)",
        metavar="FILE", default_note="made in --api-data-dir (warned about)")
    access_log_max_bytes: int = declare(
        "--access-log-max-bytes", "VLLM_AUDIT_FLEET_ACCESS_LOG_MAX_BYTES", 1 << 30,
        "cap of the access-record log; while it is full, queries are refused (429 / "
        "RESOURCE_EXHAUSTED), never unrecorded", metavar="BYTES", check=not_negative)
    query_rate_per_token: float = declare(
        "--query-rate-per-token", "VLLM_AUDIT_FLEET_QUERY_RATE_PER_TOKEN", 20.0,
        "calls per second each non-admin token may make (bursts of twice that); 0 = no limit",
        metavar="N", check=not_negative)
    price_table_file: Path | None = declare(
        "--price-table", "VLLM_AUDIT_FLEET_PRICE_TABLE", None,
        "YAML/JSON prices per model per 1k input/output tokens, for GetAggregates' cost and "
        "the cost metric", metavar="FILE", default_note="no prices (cost 0)")
    page_token_key_file: Path | None = declare(
        "--page-token-key-file", "VLLM_AUDIT_FLEET_PAGE_TOKEN_KEY_FILE", None,
        "16 random bytes (hex) sealing page tokens, shared by the replicas behind one address "
        "so one opens another's", metavar="FILE", default_note="a key per process")
    tls_cert: Path | None = declare(
        "--tls-cert", "VLLM_AUDIT_FLEET_TLS_CERT", None, "TLS certificate of both listeners",
        metavar="PEM")
    tls_key: Path | None = declare(
        "--tls-key", "VLLM_AUDIT_FLEET_TLS_KEY", None, "TLS key of both listeners", metavar="PEM")
    tls_client_ca: Path | None = declare(
        "--tls-client-ca", "VLLM_AUDIT_FLEET_TLS_CLIENT_CA", None,
        "mutual TLS: the CA client certificates must come from", metavar="PEM")
    allow_insecure_remote: bool = declare(
        "--allow-insecure-remote", "VLLM_AUDIT_FLEET_ALLOW_INSECURE_REMOTE", False,
        "allow plaintext listeners beyond loopback (e.g. behind a mesh that encrypts)")

    def __post_init__(self) -> None:
        for option in FLEET_API_OPTIONS:
            option.validate(getattr(self, option.field))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")


FLEET_API_OPTIONS: tuple[Option, ...] = options_of(FleetApiConfig)

if __name__ == "__main__":  # the README's table
    sys.stdout.write(markdown_table(FLEET_API_OPTIONS) + "\n")
