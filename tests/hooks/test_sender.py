"""The hook's real sender thread against the real agent over its Unix socket.

Covers the delivery claims of the README: batches the agent did not acknowledge (its WAL was
full) are kept and resent after a reconnect; past the hook's byte cap the oldest are dropped,
counted, and named by the next batch's gap marker; nothing disappears without a count.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.agent_harness import agent, query, until
from tests.support.sender_harness import running_sender
from vllm_audit.v1 import query_pb2
from vllm_audit_agent.server import AgentHandle
from vllm_hooks.events import raw_events as raw
from vllm_hooks.transport.buffer import EventBuffer
from vllm_hooks.transport.sender import Sender

FINISHED = raw.FINISHED
EVENTS = 30
#: Small enough that the agent refuses appends after a few one-event batches.
SMALL_WAL = 1500


def finished(i: int) -> tuple[object, ...]:
    return (raw.LIFECYCLE, 10**18 + i, f"req{i:04d}-abcdefgh", FINISHED, 3, 5, "stop",
            "FINISHED_STOPPED", 16, False)




async def fill_until_refused(handle: AgentHandle, sender: Sender, buffer: EventBuffer) -> None:
    for i in range(EVENTS):
        buffer.offer(finished(i))
    await until(lambda: sender.stats.batches_sent >= EVENTS and len(buffer) == 0
                and handle.state.counters["refused_batches_wal_full"] > 0, "refused batches")
    # Every stored batch's ack has reached the hook.
    await until(lambda: sender.stats.batches_acked == handle.state.counters["batches"], "acks")


async def delivered_request_ids(handle: AgentHandle) -> set[str]:
    page = await query(handle).ListTrails(query_pb2.ListTrailsRequest(page_size=1000))
    return {t.request_id for t in page.trails}


async def test_unacknowledged_batches_are_resent_after_the_agent_restarts(tmp_path: Path) -> None:
    socket = tmp_path / "ingest.sock"
    with running_sender(socket, batch_events=1, unacked_bytes=1 << 20) as (sender, buffer):
        async with agent(tmp_path, wal_max_bytes=SMALL_WAL) as (handle, _):
            await fill_until_refused(handle, sender, buffer)
            accepted = handle.state.counters["events"]
            assert 0 < accepted < EVENTS
            assert sender.unacked_batches() == EVENTS - accepted
        # The agent comes back with room: the hook resends everything it kept.
        async with agent(tmp_path) as (handle, _):
            assert await asyncio.to_thread(sender.flush, 15.0)
            ids = await delivered_request_ids(handle)
            assert ids == {f"req{i:04d}-abcdefgh" for i in range(EVENTS)}
            stats = await query(handle).GetStats(query_pb2.StatsRequest())
            assert stats.events_ingested == EVENTS  # replayed from the WAL + resent
            assert stats.duplicate_batches == 0
            assert dict(stats.hook_dropped_by_reason) == {}


async def test_batches_past_the_byte_cap_are_dropped_counted_and_named(tmp_path: Path) -> None:
    socket = tmp_path / "ingest.sock"
    with running_sender(socket, batch_events=1, unacked_bytes=500) as (sender, buffer):
        async with agent(tmp_path, wal_max_bytes=SMALL_WAL) as (handle, _):
            await fill_until_refused(handle, sender, buffer)
            accepted = handle.state.counters["events"]
            # Only what fits under the cap is kept.
            assert sender.unacked_batches() < EVENTS - accepted
        async with agent(tmp_path) as (handle, _):
            assert await asyncio.to_thread(sender.flush, 15.0)
            stats = await query(handle).GetStats(query_pb2.StatsRequest())
            dropped = dict(stats.hook_dropped_by_reason)
            # Every event is either delivered or counted as dropped, and the gap is named.
            assert stats.events_ingested + dropped["unacked_overflow"] == EVENTS
            assert dropped["unacked_overflow"] > 0
            assert dropped["missing_batches"] == sender.stats.batches_dropped
            ids = await delivered_request_ids(handle)
            assert len(ids) == stats.events_ingested
