"""Who holds which credential: the roles, the token table (SHA-256 of a token -> `Principal`),
the local admin token and the /metrics token.

The agent holds only SHA-256 hashes of tokens (from `--auth-tokens-file`), each mapped to a
subject, a role and an optional tenant. Without a tokens file the agent makes one admin token
at first start in its data directory (`admin.token`, 0600) for the local CLI — the
Jupyter/Grafana quick start. What each role may call is the gate's table (gate.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("vllm_audit.agent")

AUDITOR = "auditor"
TENANT_AUDITOR = "tenant-auditor"
OPERATOR = "operator"
ADMIN = "admin"
ROLES = (AUDITOR, TENANT_AUDITOR, OPERATOR, ADMIN)

ADMIN_TOKEN_FILE = "admin.token"


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str
    #: Set for a tenant-auditor: the only tenant whose trails it can read.
    tenant: str = ""
    #: A short prefix of the token's hash: names the credential in logs and the meta-audit
    #: without revealing anything that could be replayed.
    token_id: str = ""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- the token table --------------------------------------------------------------------------
class TokenTable:
    """SHA-256 of a token -> Principal. Tokens themselves are never stored."""

    def __init__(self, entries: Mapping[str, Principal] | None = None) -> None:
        self._by_hash: dict[str, Principal] = dict(entries or {})

    def __len__(self) -> int:
        return len(self._by_hash)

    def add(self, sha256: str, principal: Principal) -> None:
        self._by_hash[sha256] = principal

    def lookup(self, token: str) -> Principal | None:
        # A dict lookup on the digest: timing reveals nothing about a valid token.
        return self._by_hash.get(hash_token(token))

    @classmethod
    def from_file(cls, path: Path) -> TokenTable:
        """Reads a YAML or JSON tokens file; raises ValueError naming the entry at fault.

        Either a list of entries or `{"tokens": [...]}`; each entry has `sha256` (hex of the
        token's SHA-256), `subject`, `role` and, for a tenant-auditor, `tenant`."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"auth tokens file {path}: {exc.strerror or exc}") from None
        data: Any
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"auth tokens file {path}: not valid JSON ({exc})") from None
        else:
            import yaml  # type: ignore[import-untyped]  # no stubs installed; safe_load only

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(f"auth tokens file {path}: not valid YAML ({exc})") from None
        if isinstance(data, dict):
            data = data.get("tokens")
        if not isinstance(data, list) or not data:
            raise ValueError(f"auth tokens file {path}: expected a non-empty list of tokens "
                             "(or a mapping with a 'tokens' list)")
        table = cls()
        for i, entry in enumerate(data):
            sha, principal = _parse_entry(path, i, entry)
            if sha in table._by_hash:
                raise ValueError(f"auth tokens file {path}: entry {i}: sha256 appears twice")
            table.add(sha, principal)
        return table


def _parse_entry(path: Path, i: int, entry: object) -> tuple[str, Principal]:
    where = f"auth tokens file {path}: entry {i}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping with sha256, subject, role")
    unknown = set(entry) - {"sha256", "subject", "role", "tenant"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (tokens are never "
                         "configured, only their sha256)")
    sha = str(entry.get("sha256", "")).strip().lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"{where}: sha256 must be 64 hex digits")
    subject = str(entry.get("subject", "")).strip()
    if not subject:
        raise ValueError(f"{where}: subject is required")
    role = str(entry.get("role", "")).strip()
    if role not in ROLES:
        raise ValueError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    tenant = str(entry.get("tenant") or "").strip()
    if role == TENANT_AUDITOR and not tenant:
        raise ValueError(f"{where}: a tenant-auditor needs a tenant")
    if role != TENANT_AUDITOR and tenant:
        raise ValueError(f"{where}: only a tenant-auditor is scoped to a tenant (role {role})")
    return sha, Principal(subject, role, tenant, sha[:12])


#: What every admin token the agent makes starts with.
ADMIN_TOKEN_PREFIX = "vla_"


def ensure_admin_token(data_dir: Path) -> str:
    """The local admin token in `data_dir/admin.token`, created (0600) if missing."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / ADMIN_TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"{path} is empty; delete it and the agent makes a new one") from None
        if path.stat().st_mode & 0o077:
            logger.warning("%s is readable by others than its owner; chmod 600 it", path)
        return token
    # The prefix names the token to secret scanners, and a token never starts with "-" (one
    # in 64 of bare token_urlsafe did: `--token <it>` was then read as an option).
    token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    logger.info("no auth tokens file configured: made a local admin token in %s", path)
    return token


def bearer_matches(authorization: str, sha256: str | None) -> bool:
    """An HTTP `Authorization` header against a configured token hash (None: no check)."""
    if sha256 is None:
        return True
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(
        hash_token(token.strip()), sha256)


def metrics_token_hash(path: Path) -> str:
    """The hash of the /metrics token kept in `path` (the file holds the token itself, as a
    Kubernetes Secret mounted for both the agent and Prometheus' bearer_token_file would)."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"metrics token file {path}: {exc.strerror or exc}") from None
    if not token:
        raise ValueError(f"metrics token file {path} is empty")
    return hash_token(token)


def load_token_table(tokens_file: Path | None, data_dir: Path) -> TokenTable:
    if tokens_file is not None:
        return TokenTable.from_file(tokens_file)
    token = ensure_admin_token(data_dir)
    sha = hash_token(token)
    return TokenTable({sha: Principal("local-admin", ADMIN, "", sha[:12])})
