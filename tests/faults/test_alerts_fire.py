"""Every alert against the fault it names, end to end: a real Prometheus with the project's rule
file (each `for` cut to seconds in a temporary copy) scraping a real agent process, and the
fault caused for real — the broker killed, the level switched off, a hook that does not follow
a level change, the disk filled. Each test asserts the alert goes pending, then fires, and that
the alerts that do not name the fault stay quiet; a healthy idle agent fires nothing.

Issue 25 found, against the rules as they were: a critical "lost audit records" page for 3
lost engine-stats snapshots, a level-mismatch gauge that flapped 2 <-> 0 while idle, and Kafka
down noticed after ~43 s (alert at +347 s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.kafka_broker import KafkaBroker
from tests.faults.harness import AgentProc, Load, running
from tests.faults.test_faults import steady
from tests.support.agent_harness import Hook
from tests.support.prometheus import (
    Prometheus,
    needs_prometheus,
    rules_with_short_for,
    running_prometheus,
)
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2, query_pb2_grpc
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.events import raw_events as raw
from vllm_hooks.runtime import HookRuntime

pytestmark = [pytest.mark.faults, needs_prometheus]

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
#: Every `for` in the copy: long enough that one odd sample does not fire, short for a test.
SHORT_FOR = "5s"
JOB = "vllm-audit"
#: Alerts that would page for lost audit records: none of these faults loses one.
AUDIT_LOSS = ("VllmAuditAgentLosingRecords", "VllmAuditAgentRejectingBatches",
              "VllmAuditHookDroppingEvents", "VllmAuditHookLostBatches")


@contextmanager
def watched(tmp: Path, agent: AgentProc) -> Iterator[Prometheus]:
    rules = rules_with_short_for(RULES, tmp / "alerts.yml", {}, default_for=SHORT_FOR)
    target = agent.base.removeprefix("http://")
    with running_prometheus(tmp / "prometheus", JOB, [target], [rules]) as prom:
        prom.scraped(JOB, 2)
        yield prom


def pending_then_firing(prom: Prometheus, alert: str, timeout: float) -> tuple[float, float]:
    """Seconds until `alert` was seen pending, then firing (polled every 0.5 s)."""
    start = time.monotonic()
    seen_pending: float | None = None
    while True:
        state = prom.alerts().get(alert)
        now = time.monotonic() - start
        if state == "pending" and seen_pending is None:
            seen_pending = now
        if state == "firing":
            assert seen_pending is not None, f"{alert} fired without going pending first"
            return seen_pending, now
        if now > timeout:
            raise AssertionError(f"{alert} not firing after {timeout}s: {prom.alerts()}")
        time.sleep(0.5)


def quiet(prom: Prometheus, names: tuple[str, ...]) -> None:
    active = {n: s for n, s in prom.alerts().items() if n in names}
    assert not active, active


def set_level(agent: AgentProc, level: int) -> None:
    with agent.channel() as channel:
        stub = query_pb2_grpc.ControlServiceStub(channel)
        stub.SetAuditLevel(query_pb2.SetAuditLevelRequest(level=level),  # type: ignore[arg-type]
                           timeout=10)


@contextmanager
def following_hooks(socket: Path) -> Iterator[list[HookRuntime]]:
    """Two hook runtimes as vLLM runs them (API server and engine core): real senders that
    apply and report the level the agent pushes (the fault suite's Load does not apply it)."""
    runtimes = [HookRuntime(HookSettings(enabled=True, agent_address=str(socket), flush_ms=5),
                            role) for role in ("frontend", "engine_core")]
    for rt in runtimes:
        rt.sender.start()
    try:
        yield runtimes
    finally:
        for rt in runtimes:
            rt.close(2.0)


@pytest.fixture
def broker() -> Iterator[KafkaBroker]:
    with KafkaBroker() as b:
        yield b


def test_a_healthy_idle_agent_fires_nothing(tmp_path: Path, broker: KafkaBroker) -> None:
    """Two minutes of two connected, idle hooks on the agent's level and a live broker: no
    alert pending or firing at any poll (the level gauge's flap fired with a 5 s `for`)."""
    socket = tmp_path / "ingest.sock"
    key = tmp_path / "signing.key"  # kept apart from the data dir, as deployed
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    agent = AgentProc(tmp_path, tmp_path / "data", socket, "--audit-level", "summary",
                      "--level-apply-deadline", "2", "--signing-key-file", str(key),
                      kafka=broker.bootstrap)
    with running(agent), following_hooks(socket) as hooks, watched(tmp_path, agent) as prom:
        for i in range(100):
            hooks[0].buffer.offer((raw.LIFECYCLE, time.time_ns(), f"idle{i:05d}-0123abcd",
                                   raw.FINISHED, 3, 5, "stop", "FINISHED_STOPPED", 16, False))
        assert hooks[0].sender.flush(30)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert prom.alerts() == {}
            time.sleep(2)
        assert prom.value(f'max_over_time(vllm_audit_level_mismatch_sources{{job="{JOB}"}}[2m])') == 0


def test_a_killed_broker_fires_kafka_down_and_no_audit_loss(tmp_path: Path,
                                                            broker: KafkaBroker) -> None:
    socket = tmp_path / "ingest.sock"
    agent = AgentProc(tmp_path, tmp_path / "data", socket, kafka=broker.bootstrap)
    with running(agent), Load(socket) as load, watched(tmp_path, agent) as prom:
        load.offer(200)
        assert load.flush(30)
        prom.wait("published", lambda: prom.value(
            f'vllm_audit_undelivered_records{{job="{JOB}"}}') == 0)
        os.kill(broker.pid, signal.SIGKILL)
        killed = time.monotonic()
        stop = threading.Event()
        feeder = steady(load, stop, per_tick=2)  # records keep coming, and wait
        try:
            prom.wait("the connected gauge at 0", lambda: prom.value(
                f'vllm_audit_kafka_connected{{job="{JOB}"}}') == 0, timeout=15)
            noticed = time.monotonic() - killed
            pending, firing = pending_then_firing(prom, "VllmAuditKafkaDown", 30)
            quiet(prom, AUDIT_LOSS)
        finally:
            stop.set()
            feeder.join()
    # Scraped every second: the probe's second, a scrape and an evaluation.
    assert noticed < 6, noticed
    assert firing - pending >= 4, (pending, firing)


def test_level_switched_off_fires_switched_off(tmp_path: Path) -> None:
    socket = tmp_path / "ingest.sock"
    agent = AgentProc(tmp_path, tmp_path / "data", socket, "--audit-level", "summary")
    with running(agent), watched(tmp_path, agent) as prom:
        quiet(prom, ("VllmAuditSwitchedOff",))
        set_level(agent, pb.AUDIT_LEVEL_OFF)
        pending_then_firing(prom, "VllmAuditSwitchedOff", 30)
        set_level(agent, pb.AUDIT_LEVEL_SUMMARY)
        prom.wait("the alert resolved", lambda: "VllmAuditSwitchedOff" not in prom.alerts(), 30)


def test_a_hook_that_does_not_follow_a_level_change_fires_level_mismatch(
        tmp_path: Path) -> None:
    """A stuck hook: connected, it reports summary and applies nothing it is told."""
    socket = tmp_path / "ingest.sock"
    agent = AgentProc(tmp_path, tmp_path / "data", socket, "--audit-level", "summary",
                      "--level-apply-deadline", "1")
    with running(agent), watched(tmp_path, agent) as prom:

        async def stuck_hook() -> None:
            async with Hook(socket) as hook:
                pushed = await hook.next("config")
                await hook.send(1, applied_level=pb.AUDIT_LEVEL_SUMMARY,
                                config_epoch=pushed.config.epoch,
                                config_version=pushed.config.version)
                await asyncio.sleep(3)
                quiet(prom, ("VllmAuditLevelMismatch",))  # on the agent's level: no alert
                await asyncio.to_thread(set_level, agent, pb.AUDIT_LEVEL_FULL)
                await asyncio.to_thread(pending_then_firing, prom, "VllmAuditLevelMismatch", 30)

        asyncio.run(stuck_hook())
        # The stream closed: nothing connected is mismatched, the alert resolves.
        prom.wait("the alert resolved", lambda: "VllmAuditLevelMismatch" not in prom.alerts(),
                  30)


def test_a_full_disk_fires_refusing_batches_and_nothing_is_lost(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(data)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        socket = tmp_path / "ingest.sock"
        agent = AgentProc(tmp_path, data, socket, "--wal-segment-bytes", "65536")
        with running(agent), Load(socket) as load, watched(tmp_path, agent) as prom:
            load.offer(200)
            assert load.flush(30)
            filler = data / "filler"
            with open(filler, "wb", buffering=0) as f:  # to the last block
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError:
                    pass
            load.offer(2000)  # refused, kept by the hook and retried
            pending_then_firing(prom, "VllmAuditAgentRefusingBatches", 60)
            # Retriable refusals: the hook keeps the batches, nothing is lost.
            quiet(prom, AUDIT_LOSS)
            filler.unlink()
            assert load.flush(90), f"not delivered after the disk was freed: {prom.alerts()}"
            assert load.dropped() == 0
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_the_rule_copy_only_shortens_for(tmp_path: Path) -> None:
    """The copy the tests load is the shipped file with every `for` at SHORT_FOR."""
    import yaml

    original = yaml.safe_load(RULES.read_text())
    copy = yaml.safe_load(rules_with_short_for(RULES, tmp_path / "a.yml", {}, SHORT_FOR)
                          .read_text())
    for g0, g1 in zip(original["groups"], copy["groups"], strict=True):
        for r0, r1 in zip(g0["rules"], g1["rules"], strict=True):
            assert {k: v for k, v in r0.items() if k != "for"} == \
                {k: v for k, v in r1.items() if k != "for"}
            assert ("for" in r0) == ("for" in r1)
