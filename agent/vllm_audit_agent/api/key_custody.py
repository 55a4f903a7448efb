"""Where the record log's signing key lives, for an alert: 1 while it lies inside the data
directory (records/chain.py key_in_data_dir), where whoever copies the directory can rewrite
the log and re-sign it. Decided once, at start: the key file does not move while the agent
runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vllm_audit_agent.records.chain import key_in_data_dir


class KeyCustodyCollector(Collector):
    def __init__(self, key_file: Path | None, data_dir: Path) -> None:
        self.inside = key_in_data_dir(key_file, data_dir)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "vllm_audit_signing_key_in_data_dir",
            "1: the record log's signing key is inside the data directory (whoever has a copy "
            "of it can rewrite and re-sign the log); 0: kept apart (--signing-key-file)",
            value=int(self.inside))
