"""Level control that cannot silently fail: the hook's real runtime and sender against the real
agent, restarted on the same data dir and on a fresh one."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.agent_harness import Hook, agent, control, lifecycle, query, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.control.level_file import LEVEL_FILE
from vllm_audit_agent.server import AgentHandle
from vllm_hooks.config.levels import Level
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.runtime import HookRuntime


@contextmanager
def hook_runtime(socket: Path) -> Iterator[HookRuntime]:
    """The hook's per-process runtime (its real sender thread), without atexit registration."""
    settings = HookSettings(enabled=True, agent_address=str(socket), level=Level.SUMMARY,
                            flush_ms=5)
    rt = HookRuntime(settings, "test")
    rt.sender.start()
    try:
        yield rt
    finally:
        rt.close(2.0)


async def set_level(handle: AgentHandle, level: int) -> q.SetAuditLevelResponse:
    reply: q.SetAuditLevelResponse = await control(handle).SetAuditLevel(
        q.SetAuditLevelRequest(level=level))  # type: ignore[arg-type]
    return reply


async def reported(handle: AgentHandle, level: int, timeout: float = 30.0) -> None:
    """Waits until the agent's stats (the API, not its internals) show exactly one connected
    hook, running `level`. Polled as a whole: a hook that has just reconnected may still be
    listed beside its old session for a moment, and that is not what is tested here."""
    deadline = time.monotonic() + timeout
    while True:
        stats = await query(handle).GetStats(q.StatsRequest())
        levels = [s.applied_level for s in stats.source_levels]
        if levels == [level] and len(handle.state.sessions) == 1:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for the hook to report level {level}: "
                                 f"the API lists {levels}, sessions "
                                 f"{len(handle.state.sessions)}")
        await asyncio.sleep(0.05)


async def test_hooks_follow_a_restarted_agent_and_the_level_survives_restarts(
        tmp_path: Path) -> None:
    socket = tmp_path / "ingest.sock"
    with hook_runtime(socket) as rt:
        async with agent(tmp_path) as (handle, _):
            await reported(handle, pb.AUDIT_LEVEL_SUMMARY)
            for level in (pb.AUDIT_LEVEL_FULL, pb.AUDIT_LEVEL_SUMMARY, pb.AUDIT_LEVEL_OFF):
                reply = await set_level(handle, level)
            assert reply.version == 4
            await until(lambda: rt.level == Level.OFF, "the hook to apply off")
            await reported(handle, pb.AUDIT_LEVEL_OFF)
        # Same data dir: the level set through the API is still in force after the restart.
        async with agent(tmp_path) as (handle, _):
            assert handle.state.level == pb.AUDIT_LEVEL_OFF
            stats = await query(handle).GetStats(q.StatsRequest())
            assert stats.audit_level == pb.AUDIT_LEVEL_OFF
            await reported(handle, pb.AUDIT_LEVEL_OFF)
            await set_level(handle, pb.AUDIT_LEVEL_FULL)
            await until(lambda: rt.level == Level.FULL, "the hook to apply full")
        # A fresh data dir (a new pod): the agent counts versions from 1 again. The hook's
        # version is higher, but the new epoch wins — before the fix this push was ignored.
        async with agent(tmp_path, data_dir=tmp_path / "fresh") as (handle, _):
            assert handle.state.level_version == 1
            await reported(handle, pb.AUDIT_LEVEL_SUMMARY)  # the configured level, taken
            assert rt.level == Level.SUMMARY
            reply = await set_level(handle, pb.AUDIT_LEVEL_OFF)
            assert reply.version == 2  # lower than the 5 the hook applied last: still taken
            await until(lambda: rt.level == Level.OFF, "the hook to apply off after restart")
            await reported(handle, pb.AUDIT_LEVEL_OFF)
            stats = await query(handle).GetStats(q.StatsRequest())
            assert stats.level_mismatch_sources == 0


async def test_a_hook_that_does_not_apply_the_level_is_visible(tmp_path: Path) -> None:
    async with agent(tmp_path, level_apply_deadline_seconds=0.2) as (handle, _), \
            Hook(handle.state.config.ingest_socket) as hook:
        await hook.next("config")
        # An old or broken hook: it reports summary and ignores what it is told.
        await hook.send(1, lifecycle("0-aaaaaaaa", pb.LIFECYCLE_PHASE_ADDED, 10**15),
                        applied_level=pb.AUDIT_LEVEL_SUMMARY)
        await set_level(handle, pb.AUDIT_LEVEL_FULL)
        await until(lambda: handle.state.level_mismatch_sources() == 1, "a mismatch")
        stats = await query(handle).GetStats(q.StatsRequest())
        assert stats.level_mismatch_sources == 1
        (source,) = stats.source_levels
        assert source.source_id == "src-1" and source.mismatch
        assert source.applied_level == pb.AUDIT_LEVEL_SUMMARY
        pushed = await hook.next("config")
        await hook.send(2, applied_level=pb.AUDIT_LEVEL_FULL, config_epoch=pushed.config.epoch,
                        config_version=pushed.config.version)
        assert handle.state.level_mismatch_sources() == 0


async def test_the_level_file_is_private_and_a_changed_configuration_wins(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _):
        await set_level(handle, pb.AUDIT_LEVEL_FULL)
        path = handle.state.config.data_dir / LEVEL_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(path.read_text())["level"] == pb.AUDIT_LEVEL_FULL
        assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    async with agent(tmp_path) as (handle, _):
        assert handle.state.level == pb.AUDIT_LEVEL_FULL
    # The operator changed the deployment's --audit-level since: the configuration wins.
    async with agent(tmp_path, audit_level=pb.AUDIT_LEVEL_OFF) as (handle, _):
        assert handle.state.level == pb.AUDIT_LEVEL_OFF


async def test_level_and_auth_metrics_are_exported_from_birth(tmp_path: Path) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {f.name: [(s.labels, s.value) for s in f.samples]
                for f in text_string_to_metric_families(text)}

    async with agent(tmp_path, level_apply_deadline_seconds=0.2) as (handle, _), \
            Hook(handle.state.config.ingest_socket) as hook:
        url = f"http://{handle.http_address}/metrics"
        families = await asyncio.to_thread(scrape, url)
        assert sorted((s[0]["reason"], s[1]) for s in families["vllm_audit_query_refused_calls"]
                      if s[0]) == [("access_budget", 0.0), ("backoff", 0.0), ("invalid_argument", 0.0),
                                   ("permission_denied", 0.0), ("rate_limited", 0.0),
                                   ("unauthenticated", 0.0)]
        assert families["vllm_audit_level_mismatch_sources"] == [({}, 0.0)]
        await hook.send(1, lifecycle("0-aaaaaaaa", pb.LIFECYCLE_PHASE_ADDED, 10**15),
                        applied_level=pb.AUDIT_LEVEL_SUMMARY)
        await set_level(handle, pb.AUDIT_LEVEL_OFF)
        await until(lambda: handle.state.level_mismatch_sources() == 1, "a mismatch")
        families = await asyncio.to_thread(scrape, url)
        assert families["vllm_audit_level_mismatch_sources"] == [({}, 1.0)]
        assert families["vllm_audit_source_applied_level"] == [
            ({"source": "src-1", "role": ""}, float(pb.AUDIT_LEVEL_SUMMARY))]


async def test_an_idle_hook_that_reconnected_is_not_a_mismatch_until_it_ignores_a_change(
        tmp_path: Path) -> None:
    """An idle hook whose stream ended reconnects and, told the config it already runs, sends
    nothing: its new stream has no source id. Counted as a mismatch, two idle hooks on the
    agent's level made the gauge read 2 after each reconnect. Silence counts only after a
    change the hook did not report."""
    async with agent(tmp_path, level_apply_deadline_seconds=0.2) as (handle, _):
        socket = handle.state.config.ingest_socket
        async with Hook(socket) as hook:
            pushed = await hook.next("config")
            await hook.send(1, applied_level=pb.AUDIT_LEVEL_SUMMARY,
                            config_epoch=pushed.config.epoch, config_version=pushed.config.version)
        async with Hook(socket) as hook:  # the same source, reconnected: it sends nothing
            await hook.next("config")
            await until(lambda: len(handle.state.sessions) == 1, "the new stream")
            await asyncio.sleep(0.5)  # past the deadline
            assert handle.state.level_mismatch_sources() == 0
            stats = await query(handle).GetStats(q.StatsRequest())
            assert stats.level_mismatch_sources == 0
            # Told a new level, a silent stream is one that did not follow.
            await set_level(handle, pb.AUDIT_LEVEL_FULL)
            await until(lambda: handle.state.level_mismatch_sources() == 1, "a mismatch")
