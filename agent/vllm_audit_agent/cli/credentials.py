"""The CLI's credential: which bearer token `vllm-audit` sends to the agent's query API.

Sending it is the query client's job (client.py, through client interceptors); this module
only decides which token that is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vllm_audit_agent.api.tokens import ADMIN_TOKEN_FILE

ENV_TOKEN = "VLLM_AUDIT_TOKEN"
ENV_TOKEN_FILE = "VLLM_AUDIT_TOKEN_FILE"


def resolve_client_token(token: str | None, token_file: Path | None, data_dir: Path | None,
                         env: Mapping[str, str]) -> str | None:
    """The CLI's credential: --token, $VLLM_AUDIT_TOKEN, --token-file / $VLLM_AUDIT_TOKEN_FILE,
    else the local agent's admin.token in the data dir if this user can read it."""
    if token:
        return token
    if env.get(ENV_TOKEN):
        return env[ENV_TOKEN]
    path = token_file or (Path(env[ENV_TOKEN_FILE]) if env.get(ENV_TOKEN_FILE) else None)
    if path is not None:
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"token file {path}: {exc.strerror or exc}") from None
    if data_dir is not None:
        try:
            return (data_dir / ADMIN_TOKEN_FILE).read_text().strip() or None
        except OSError:
            return None  # not a local agent, or not this user's: call without a credential
    return None
