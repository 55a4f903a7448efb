"""A record log's identity: its `log_id` and its signed genesis record.

Every record log gets a random 128-bit `log_id` when it is created, and its first record in
the Merkle tree is a *genesis* record: who made the log (pod, node, namespace from the
Kubernetes downward API, the agent's version), with which key (its raw public key), and, when
the chain already had records (a log written before identities existed, or a log restarted
after a break), the head it follows. Every later record carries the `log_id`, so a topic that
several agents publish to is verified log by log, and a log that starts anywhere but its
genesis must show a retention seal for what is missing.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping
from typing import Any

from vllm_audit_agent.records.chain import RECORD_TYPE_GENESIS, Signer, raw_public_key

#: Environment variables the chart fills from the downward API, and the genesis field of each.
IDENTITY_ENV = {"pod": "POD_NAME", "node": "NODE_NAME", "namespace": "POD_NAMESPACE"}
DISTRIBUTION = "vllm-audit"


def new_log_id() -> str:
    return os.urandom(16).hex()


def agent_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # a source checkout never installed
        return "unknown"


def identity_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    source = os.environ if env is None else env
    found = {field: source.get(var, "") for field, var in IDENTITY_ENV.items()}
    found["host"] = os.uname().nodename
    found["agent_version"] = agent_version()
    return found


def genesis_record(log_id: str, signer: Signer, identity: Mapping[str, str], time_ms: int,
                   follows: tuple[int, str] | None,
                   found_break: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The genesis record (signed like a checkpoint; the log then chains and seals it).
    `found_break`: why the log before it was left (records/log.py start_new_log)."""
    record: dict[str, Any] = {
        "type": RECORD_TYPE_GENESIS, "log_id": log_id, "time_unix_ms": time_ms,
        "public_key": raw_public_key(signer.public_key).hex(),
        "identity": dict(identity),
        "follows": {"seq": follows[0], "hash": follows[1]} if follows else None,
        "break": dict(found_break) if found_break else None,
    }
    signer.sign(record)
    return record
