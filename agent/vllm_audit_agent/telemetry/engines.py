"""What each hook process (source) last reported about its engines, per engine index, and
which series are live.

A data-parallel vLLM process runs several engines, each with its own stat logger: their
snapshots are kept apart by `engine_index`. A source that disconnected keeps its series for
`grace_seconds` (a hook reconnecting after a blip must not make counters vanish and
reappear); after that they are removed, so a restarted engine is never summed with its dead
predecessor.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from vllm_audit.v1 import events_pb2 as pb

#: Seconds a disconnected source's engine series stay exported.
STALE_SOURCE_GRACE_S = 60.0


@dataclass
class SourceSeries:
    model: str = ""
    role: str = ""
    pid: int = 0
    #: The GPUs the process reported it was given (Batch.gpu_uuids).
    gpu_uuids: tuple[str, ...] = ()
    last_batch: float = 0.0
    disconnected_since: float | None = None
    engines: dict[int, pb.EngineStats] = field(default_factory=dict)


class EngineTable:
    def __init__(self, grace_seconds: float = STALE_SOURCE_GRACE_S) -> None:
        self.grace_seconds = grace_seconds
        self.sources: dict[str, SourceSeries] = {}

    def observe_batch(self, batch: pb.Batch, model: str, stats: Iterable[pb.Event]) -> None:
        """Notes the batch's source; `stats`: its engine_stats events."""
        series = self.sources.get(batch.source_id)
        if series is None:
            series = self.sources[batch.source_id] = SourceSeries()
        series.model, series.role = model, batch.process_role
        series.pid = batch.pid or series.pid
        if batch.gpu_uuids:
            series.gpu_uuids = tuple(batch.gpu_uuids)
        series.last_batch = time.monotonic()
        for event in stats:
            series.engines[event.engine_stats.engine_index] = event.engine_stats

    def live(self, connected: Iterable[str], now: float | None = None
             ) -> list[tuple[str, SourceSeries]]:
        """Sources to export: connected ones, and disconnected ones within the grace period.
        Sources past it are forgotten here."""
        now = time.monotonic() if now is None else now
        up = set(connected)
        out = []
        for source_id, series in list(self.sources.items()):
            if source_id in up:
                series.disconnected_since = None
            else:
                if series.disconnected_since is None:
                    series.disconnected_since = now
                quiet_since = max(series.disconnected_since, series.last_batch)
                if now - quiet_since > self.grace_seconds:
                    del self.sources[source_id]
                    continue
            out.append((source_id, series))
        return out
