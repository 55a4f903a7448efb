"""The assembled agent: the parts server.py builds, wired to each other once.

No part reaches into this object: each receives the parts it uses through its constructor
(ingest's ledger, the recorder, level control, the trail store). This object is what the
composition root hands to the servers that answer for the whole agent (the query API, the
metrics collectors, /readyz) and to tests; its attributes are the parts, and the few
properties below are named views over them for those readers.
"""

from __future__ import annotations

import time
from collections import Counter

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.config import AgentConfig
from vllm_audit_agent.control.level import LevelControl
from vllm_audit_agent.delivery.publisher import Publisher
from vllm_audit_agent.ingest.ledger import IngestLedger
from vllm_audit_agent.ingest.recorder import Recorder
from vllm_audit_agent.ingest.session import Session
from vllm_audit_agent.ingest.sources import SourceState
from vllm_audit_agent.log_limit import LIMITED_LOGGERS, LogRateLimit
from vllm_audit_agent.records.content_keys import ContentKeyStore
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.storage.wal import WriteAheadLog
from vllm_audit_agent.telemetry.engines import EngineTable
from vllm_audit_agent.telemetry.gpu import GpuSampler
from vllm_audit_agent.telemetry.request_metrics import RequestMetrics
from vllm_audit_agent.telemetry.stats_history import StatsHistory
from vllm_audit_agent.trails.store import TrailStore


class AgentState:
    def __init__(self, config: AgentConfig, wal: WriteAheadLog, publisher: Publisher,
                 gpu: GpuSampler, records: RecordLog,
                 content_keys: ContentKeyStore | None = None) -> None:
        self.config = config
        self.wal = wal
        self.records = records
        #: The content key store (None: content sealing is off).
        self.content_keys = content_keys
        self.publisher = publisher
        self.gpu = gpu
        #: Internal errors swallowed by the agent; tests assert this stays empty.
        self.errors: Counter[str] = Counter()
        self.started = time.monotonic()
        #: Repeated log lines past a small burst are counted, not written (server.py installs
        #: it on the agent's and aiokafka's loggers; metrics export what it suppressed).
        self.log_limit = LogRateLimit(LIMITED_LOGGERS)
        self.ready = False
        #: Connected hook streams (ingest adds and removes them; level control pushes to them).
        self.sessions: set[Session] = set()
        self.engines, self.request_metrics = EngineTable(), RequestMetrics()
        self.stats_history = StatsHistory(config.data_dir, config.stats_history_bytes)
        # A final trail goes to the recorder, built below (late-bound: they refer to each other).
        self.trails = TrailStore(config.max_trails, config.max_trail_events,
                                 config.linger_seconds, lambda trail: self.recorder.record(trail),
                                 max_bytes=config.max_trail_bytes)
        self.levels = LevelControl(config.audit_level, config.data_dir,
                                   config.level_apply_deadline_seconds, self.sessions,
                                   on_change=self._record_at_level)
        self.ingest = IngestLedger(wal, self.trails, self.levels, self.engines, publisher,
                                   self.stats_history, config.engine_stats_interval_seconds)
        self.recorder = Recorder(records, wal, self.trails, self.request_metrics,
                                 self.ingest.engine_snapshot, self.ingest.counters,
                                 config.record_grammar_max_bytes, content_keys,
                                 config.content_retention_days)
        self.ingest.on_admin = self.recorder.record_admin

    def _record_at_level(self, level: int) -> None:
        self.trails.audit_level = level

    # -- views for the query API, the metrics collectors, /readyz and tests ----------------
    @property
    def counters(self) -> Counter[str]:
        return self.ingest.counters

    @property
    def agent_dropped(self) -> Counter[str]:
        return self.ingest.agent_dropped

    @property
    def hook_dropped(self) -> Counter[str]:
        return self.ingest.hook_dropped

    @property
    def clamped_fields(self) -> Counter[str]:
        return self.ingest.clamped_fields

    @property
    def sources(self) -> dict[str, SourceState]:
        return self.ingest.sources

    @property
    def ingest_healthy(self) -> bool:
        return self.ingest.healthy

    @property
    def level(self) -> int:
        return self.levels.level

    @level.setter
    def level(self, level: int) -> None:  # tests: a level taken without persisting it
        self.levels.level = level
        self._record_at_level(level)

    @property
    def level_version(self) -> int:
        return self.levels.version

    @level_version.setter
    def level_version(self, version: int) -> None:
        self.levels.version = version

    @property
    def applied_levels(self) -> dict[str, tuple[int, int, int]]:
        return self.levels.applied

    def set_level(self, level: int) -> int:
        return self.levels.set_level(level)

    def source_levels(self, now: float | None = None) -> list[q.SourceLevel]:
        return self.levels.source_levels(self.ingest.role_of, now)

    def level_mismatch_sources(self) -> int:
        """Connected hooks not running the agent's level past the deadline (alert on > 0)."""
        return sum(1 for s in self.source_levels() if s.mismatch)

    def self_timings(self) -> list[tuple[str, str, pb.HookSelfTiming]]:
        return self.ingest.self_timings(s.source_id for s in self.sessions)

    def latest_engine_stats(self) -> list[tuple[str, SourceState]]:
        return self.ingest.latest_engine_stats()

    def agent_drops(self) -> dict[str, int]:
        return self.ingest.agent_drops()

    def refused_by_reason(self) -> dict[str, int]:
        return self.ingest.refused_by_reason()

    def reclaim_wal(self) -> int:
        return self.recorder.reclaim_wal()
