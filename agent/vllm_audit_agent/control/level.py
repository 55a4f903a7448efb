"""The audit level the agent runs and pushes to every connected hook, kept across restarts.

A level set through the control API is persisted (level_file.py) and pushed to each connected
hook; each hook reports the level it applied in its batches, so a hook that does not follow is
visible (`source_levels`: `mismatch` once the deadline after a change or a connection passed).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Protocol

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.control.level_file import PersistedLevel, load_level, save_level

logger = logging.getLogger("vllm_audit.agent")


class Subscriber(Protocol):
    """A connected hook stream, as level control sees it (ingest's Session)."""

    @property
    def source_id(self) -> str: ...

    @property
    def connected_at(self) -> float: ...

    def push(self, reply: ingest_pb2.IngestReply) -> None: ...


class LevelControl:
    """`connected`: the live set of connected hook streams (ingest adds and removes them).
    `on_change`: told every level this control takes (the trail store records at it)."""

    def __init__(self, configured_level: int, data_dir: Path, apply_deadline_seconds: float,
                 connected: Collection[Subscriber], on_change: Callable[[int], None]) -> None:
        self.configured_level = configured_level
        self.data_dir = data_dir
        self.apply_deadline_seconds = apply_deadline_seconds
        self.connected = connected
        self._on_change = on_change
        self.level = configured_level
        self.version = 1
        #: Random per agent start: a hook takes any config from an epoch it has not seen, so a
        #: restarted agent (versions from 1 again) is never ignored.
        self.epoch = secrets.randbits(63) | 1
        self.changed_at = time.monotonic()
        #: What each source reports it runs: (applied level, config epoch, config version).
        self.applied: dict[str, tuple[int, int, int]] = {}
        #: Where the level in effect at start came from (the record log notes a change).
        self.source = "configuration"
        self._load()
        on_change(self.level)

    def _load(self) -> None:
        persisted = load_level(self.data_dir)
        if persisted is None:
            return
        self.version = persisted.version
        if persisted.configured_level == self.configured_level:
            self.level = persisted.level
            self.source = "level file"
            logger.info("audit level %s (set through the control API before this start)",
                        pb.AuditLevel.Name(self.level))
        else:
            logger.info("audit level %s from the configuration, which changed since the level "
                        "%s was set", pb.AuditLevel.Name(self.level),
                        pb.AuditLevel.Name(persisted.level))

    def note_applied(self, source_id: str, level: int, epoch: int, version: int) -> None:
        self.applied[source_id] = (level, epoch, version)

    def hook_config(self) -> ingest_pb2.IngestReply:
        return ingest_pb2.IngestReply(config=ingest_pb2.HookConfig(
            # the ignore[arg-type] below: an int for a contract enum (stubs want its ValueType)
            level=self.level, version=self.version, epoch=self.epoch))  # type: ignore[arg-type]

    def set_level(self, level: int) -> int:
        """Persists, then pushes the level to every connected hook; returns how many.

        Raises OSError (level unchanged) when it cannot be persisted."""
        version = self.version + 1
        save_level(self.data_dir, PersistedLevel(level, version, self.configured_level))
        self.level, self.version = level, version
        self._on_change(level)
        self.changed_at = time.monotonic()
        reply = self.hook_config()
        for subscriber in self.connected:
            subscriber.push(reply)
        return len(self.connected)

    def source_levels(self, role_of: Callable[[str], str],
                      now: float | None = None) -> list[q.SourceLevel]:
        """The level each connected hook reports it runs; `mismatch` when it is not the
        agent's level `apply_deadline_seconds` after the change (or the connection).

        A stream that has sent nothing yet has no source id: an idle hook that reconnected
        to the same agent (its stream ended: a transport blip, an ack timeout) was told the
        config it already runs, so it has nothing new to report and stays silent. It counts as a
        mismatch only when the level changed after it connected: a change makes every hook
        report, so its silence then says it did not follow. (Counting every silent stream
        made the gauge read 2 for two idle hooks on the agent's level after a reconnect.)"""
        now = time.monotonic() if now is None else now
        out = []
        for subscriber in self.connected:
            level, epoch, version = self.applied.get(subscriber.source_id, (0, 0, 0))
            late = now - max(self.changed_at, subscriber.connected_at) > self.apply_deadline_seconds
            if not subscriber.source_id and self.changed_at <= subscriber.connected_at:
                late = False  # silent since it was told the config it runs (see above)
            out.append(q.SourceLevel(
                source_id=subscriber.source_id, process_role=role_of(subscriber.source_id),
                # the ignore[arg-type] below: an int for a contract enum (stubs want its ValueType)
                applied_level=level, config_epoch=epoch, config_version=version,  # type: ignore[arg-type]
                connected=True, mismatch=late and level != self.level))
        return out
