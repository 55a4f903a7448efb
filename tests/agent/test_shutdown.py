"""The agent's stop is bounded by one deadline, even with Kafka hung.

Kubernetes kills the pod `terminationGracePeriodSeconds` after SIGTERM (30 s by default);
with the broker frozen (SIGSTOP) the stop used to take ~39 s, waiting out the producer's
request timeout. Real broker, real agent; records left unpublished stay in the record log
after the publish cursor and are published after the next start.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from harness.kafka_broker import KafkaBroker
from tests.support.agent_harness import Hook, agent_config, lifecycle, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.delivery.kafka_sink import KafkaPublisher
from vllm_audit_agent.server import running_agent

DEADLINE_S = 4.0


def finished(rid: str) -> pb.Event:
    return lifecycle(rid, pb.LIFECYCLE_PHASE_FINISHED, 10**15, finish_reason="stop")


async def test_stop_with_kafka_hung_finishes_within_the_deadline(tmp_path: Path) -> None:
    broker = KafkaBroker()
    await asyncio.to_thread(broker.__enter__)  # its start is blocking
    try:
        await _stop_with_kafka_hung(tmp_path, broker)
    finally:
        await asyncio.to_thread(broker.__exit__, None, None, None)


async def _stop_with_kafka_hung(tmp_path: Path, broker: KafkaBroker) -> None:
    pid = broker.pid
    config = agent_config(tmp_path, kafka_bootstrap=broker.bootstrap,
                          shutdown_timeout_seconds=DEADLINE_S)
    publisher = KafkaPublisher(broker.bootstrap, config.kafka_topic_prefix, max_backoff=0.5)
    frozen = False
    try:
        async with running_agent(config, publisher=publisher) as handle:
            async with Hook(config.ingest_socket) as hook:
                await hook.send(1, finished("1-before00"))
                # The log's own first records (genesis, level) and the request: all out.
                await until(lambda: handle.state.records.durable_seq >= 3
                            and publisher.backlog_records == 0, "first publish")
                before = publisher.counters["published"]
                os.kill(pid, signal.SIGSTOP)  # the broker hangs: connections stay open
                frozen = True
                for seq in range(2, 12):
                    await hook.send(seq, finished(f"{seq}-hung0000"))
                # Sends are in flight to a broker that never answers.
                await asyncio.sleep(0.5)
                assert handle.state.publisher.counters["published"] == before
            started = time.monotonic()
        elapsed = time.monotonic() - started
    finally:
        if frozen:
            os.kill(pid, signal.SIGCONT)
    # The stop ends within its deadline (plus scheduling slack), not at aiokafka's 40 s.
    assert elapsed < DEADLINE_S + 2.0, f"stop took {elapsed:.1f}s"
    # What was not published is still owed: the next start publishes it from the record log.
    publisher = KafkaPublisher(broker.bootstrap, config.kafka_topic_prefix, max_backoff=0.5)
    async with running_agent(config, publisher=publisher):
        await until(lambda: publisher.counters["published"] >= 10, "republished after restart")
