"""Wires a witness once: its key, the log keys it trusts, its state directory (locked: one
witness per directory), the HTTP port; runs until the injected shutdown trigger.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vllm_audit_agent.records import note
from vllm_audit_agent.records.chain import (
    key_id,
    load_private_key,
    load_public_key,
    public_pem,
    raw_public_key,
)
from vllm_audit_agent.storage.datadir import DataDirLock, write_private_file
from vllm_audit_agent.witness.checks import Witness
from vllm_audit_agent.witness.http import WitnessHttp
from vllm_audit_agent.witness.store import WitnessStore

logger = logging.getLogger("vllm_audit.witness")

DEFAULT_NAME = "vllm-audit-witness"
#: Its public key (PEM), written in the state directory at start for verifiers to pin.
PUBLIC_KEY_NAME = "witness.pub"


@dataclass(frozen=True)
class WitnessConfig:
    key_file: Path
    state_dir: Path
    host: str
    port: int
    log_public_keys: tuple[Path, ...]
    name: str = DEFAULT_NAME
    #: Make the key file (0600) when it does not exist (compose; a chart mounts a Secret).
    create_key: bool = False


def verifier_key(name: str, public: Ed25519PublicKey) -> str:
    """The witness's signed-note verifier key (cosignature/v1): name+keyhash+base64(0x04||key)."""
    digest = note.key_hash(name, note.COSIGNATURE_V1, public).hex()  # the cosignature/v1 type
    return f"{name}+{digest}+{base64.b64encode(note.COSIGNATURE_V1 + raw_public_key(public)).decode()}"


def public_text(name: str, public: Ed25519PublicKey) -> str:
    return (f"# vllm-audit witness {name!r}, key id {key_id(public)}\n"
            f"# note verifier key: {verifier_key(name, public)}\n"
            f"{public_pem(public).decode()}")


def load_or_create_key(path: Path, create: bool) -> Ed25519PrivateKey:
    if not path.exists() and create:
        key = Ed25519PrivateKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_file(path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        logger.info("made the witness key %s", path)
        return key
    return load_private_key(path)


def check_name(name: str) -> None:
    """A signed-note key name: printable, no spaces, no '+' (it separates a verifier key)."""
    if not name or any(c.isspace() or c == "+" or not c.isprintable() for c in name):
        raise ValueError(f"witness name {name!r}: a key name has no spaces and no '+'")


@contextlib.asynccontextmanager
async def running_witness(config: WitnessConfig) -> AsyncIterator[WitnessHttp]:
    check_name(config.name)
    if not config.log_public_keys:
        raise ValueError("give at least one --log-public-key: the witness cosigns only "
                         "checkpoints signed by a log key it trusts")
    key = load_or_create_key(config.key_file, config.create_key)
    log_keys = [load_public_key(path) for path in config.log_public_keys]
    with DataDirLock(config.state_dir):
        witness = Witness(config.name, key, log_keys, WitnessStore(config.state_dir))
        text = public_text(config.name, key.public_key())
        (config.state_dir / PUBLIC_KEY_NAME).write_bytes(public_pem(key.public_key()))
        http = WitnessHttp(witness, text)
        await http.start(config.host, config.port)
        logger.info("witness %r listening on %s:%d for %d log key(s), following %d log(s); "
                    "its key:\n%s", config.name, config.host, http.port, len(log_keys),
                    len(witness.store.logs), text)
        try:
            yield http
        finally:
            await http.stop()


async def serve(config: WitnessConfig, shutdown_trigger: Awaitable[object]) -> None:
    async with running_witness(config):
        await shutdown_trigger
