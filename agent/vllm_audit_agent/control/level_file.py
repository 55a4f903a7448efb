"""The audit level set through the control API, persisted so an agent restart keeps it.

One small JSON file in the data directory, written atomically (temporary file, fsync, rename,
fsync of the directory) and private (0600). It also records the level the agent was
*configured* with when the level was set: if the configuration changed since (someone edited
the deployment's --audit-level), the configuration wins, so a deliberate change of the flag is
never overridden by an old `set-level`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from vllm_audit_agent.storage.datadir import write_private_file

logger = logging.getLogger("vllm_audit.agent")

LEVEL_FILE = "audit-level.json"


@dataclass(frozen=True)
class PersistedLevel:
    level: int
    version: int
    configured_level: int


def load_level(data_dir: Path) -> PersistedLevel | None:
    path = data_dir / LEVEL_FILE
    try:
        data = json.loads(path.read_text())
        return PersistedLevel(int(data["level"]), int(data["version"]),
                              int(data["configured_level"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Refusing to start over it would be worse: the configured level applies, and says so.
        logger.error("ignoring unreadable %s (%r): the configured audit level applies", path, exc)
        return None


def save_level(data_dir: Path, persisted: PersistedLevel) -> None:
    """Atomically replaces the level file; raises OSError when it could not be made durable."""
    data_dir.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"level": persisted.level, "version": persisted.version,
                       "configured_level": persisted.configured_level}).encode()
    write_private_file(data_dir / LEVEL_FILE, body)
