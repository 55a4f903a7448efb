"""The CLI's credential: which bearer token `vllm-audit` sends to the agent's query API.

Sending it is the query client's job (client.py, through client interceptors); this module
only decides which token that is, and remembers where it looked, so that a call the agent
refuses for want of a credential can say which token files were tried.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vllm_audit_agent.api.tokens import ADMIN_TOKEN_FILE

ENV_TOKEN = "VLLM_AUDIT_TOKEN"
ENV_TOKEN_FILE = "VLLM_AUDIT_TOKEN_FILE"


@dataclass(frozen=True)
class Credential:
    token: str | None
    #: Where no token was found, in the order looked (empty once one was found first time).
    tried: tuple[str, ...] = ()

    def missing(self) -> str:
        """Why no credential was sent, for the message of a refused call."""
        return ("no credential was sent: " + "; ".join(self.tried) +
                f" (give --token, ${ENV_TOKEN} or --token-file)")


def resolve_credential(token: str | None, token_file: Path | None, data_dir: Path | None,
                       env: Mapping[str, str]) -> Credential:
    """The CLI's credential: --token, $VLLM_AUDIT_TOKEN, --token-file / $VLLM_AUDIT_TOKEN_FILE,
    else the local agent's admin.token in the data dir if this user can read it."""
    if token:
        return Credential(token)
    if env.get(ENV_TOKEN):
        return Credential(env[ENV_TOKEN])
    path = token_file or (Path(env[ENV_TOKEN_FILE]) if env.get(ENV_TOKEN_FILE) else None)
    if path is not None:
        try:
            return Credential(path.read_text().strip())
        except OSError as exc:
            raise ValueError(f"token file {path}: {exc.strerror or exc}") from None
    tried = [f"no --token, ${ENV_TOKEN} unset, no --token-file and ${ENV_TOKEN_FILE} unset"]
    if data_dir is None:
        return Credential(None, tuple(tried))
    admin = data_dir / ADMIN_TOKEN_FILE
    try:
        found = admin.read_text().strip()
    except OSError as exc:  # not a local agent, or not this user's: call without a credential
        tried.append(f"the local agent's token file {admin}: {exc.strerror or exc}")
        return Credential(None, tuple(tried))
    if not found:
        tried.append(f"the local agent's token file {admin}: empty")
        return Credential(None, tuple(tried))
    return Credential(found)

