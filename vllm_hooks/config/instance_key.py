"""The key the hook processes of one vLLM launch share (`VLLM_AUDIT_INSTANCE_KEY`).

The in-response audit is read in the API server process, but the structured-output audit it
shows was written by the EngineCore process's hook. Both belong to one launch: the first
process the hook is enabled in makes a random key and puts it in its environment, which every
process vLLM starts afterwards inherits (vLLM loads plugins while parsing its arguments, before
it starts the engine). Each sender stamps `instance_tag(key)` on its batches; reading a trail
back over the ingest socket presents the key itself, and the agent answers only for trails
with events from a source of that tag. The key never leaves the launch's processes and the
agent; the tag cannot be turned back into it.
"""

from __future__ import annotations

import hashlib
import os
import secrets

from vllm_hooks.config.env_vars import ENV_INSTANCE_KEY


def instance_key(env: dict[str, str] | os._Environ[str] | None = None) -> str:
    """This launch's key: inherited, or made now and put in `env` (os.environ) so the
    processes started from here on share it."""
    env = os.environ if env is None else env
    key = env.get(ENV_INSTANCE_KEY, "")
    if not key:
        key = env[ENV_INSTANCE_KEY] = secrets.token_hex(16)
    return key


def instance_tag(key: str) -> bytes:
    """What batches carry (Batch.instance_tag): the first 16 bytes of SHA-256 of the key."""
    return hashlib.sha256(key.encode()).digest()[:16]
