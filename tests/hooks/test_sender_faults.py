"""The hook's real sender thread against agents that misbehave, then against the real agent.

Each misbehaving agent is a tiny IngestService on a real gRPC server over the same Unix socket:
one takes the stream and never answers, one ends it (with an error status, or cleanly) without
answering, one refuses chosen batches and forwards the rest to the real agent. Afterwards the
real agent must hold every event, or the hook must have counted it by reason: delivered plus
counted drops equals sent, exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.agent_harness import Hook, agent, query, until
from tests.support.sender_harness import running_sender
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2
from vllm_hooks.events import raw_events as raw
from vllm_hooks.transport.sender import Sender

FINISHED = raw.FINISHED
EVENTS = 40


def finished(i: int) -> tuple[object, ...]:
    return (raw.LIFECYCLE, 10**18 + i, f"req{i:04d}", FINISHED, 3, 5, "stop",
            "FINISHED_STOPPED", 16, False)


def request_ids(n: int) -> set[str]:
    return {f"req{i:04d}" for i in range(n)}




@contextlib.asynccontextmanager
async def ingest_server(socket: Path, servicer: ingest_pb2_grpc.IngestServiceServicer
                        ) -> AsyncIterator[None]:
    server = grpc.aio.server()
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket)
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    try:
        yield
    finally:
        await server.stop(0)


class Silent(ingest_pb2_grpc.IngestServiceServicer):
    """Takes the stream and every batch, and never answers."""

    def __init__(self) -> None:
        self.streams = 0
        self.batches = 0

    async def Stream(self, request_iterator: AsyncIterator[pb.Batch],
                     context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.streams += 1
        async for _ in request_iterator:
            self.batches += 1


class EndsAfterOneBatch(ingest_pb2_grpc.IngestServiceServicer):
    """Reads one batch without answering it, then ends the stream with `code`."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code
        self.streams = 0

    async def Stream(self, request_iterator: AsyncIterator[pb.Batch],
                     context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.streams += 1
        async for _ in request_iterator:
            break
        if self.code != grpc.StatusCode.OK:
            await context.abort(self.code, "agent-side exception")


async def assert_everything_delivered(tmp_path: Path, sender: Sender) -> None:
    async with agent(tmp_path) as (handle, _):
        assert await asyncio.to_thread(sender.flush, 15.0)
        stats = await query(handle).GetStats(query_pb2.StatsRequest())
        assert stats.events_ingested == EVENTS
        assert dict(stats.hook_dropped_by_reason) == {}
        page = await query(handle).ListTrails(query_pb2.ListTrailsRequest(page_size=1000))
        assert {t.request_id for t in page.trails} == request_ids(EVENTS)


async def test_a_silent_agent_hits_the_ack_deadline_and_the_sender_reconnects(
        tmp_path: Path) -> None:
    socket = tmp_path / "ingest.sock"
    silent = Silent()
    with running_sender(socket, batch_events=4, ack_timeout_ms=300) as (sender, buffer):
        async with ingest_server(socket, silent):
            for i in range(EVENTS):
                buffer.offer(finished(i))
            # Each stream is cancelled at the deadline and the batches resent on the next one.
            await until(lambda: sender.stats.ack_timeouts >= 2 and silent.streams >= 3,
                        "two ack deadlines and a third stream")
            assert silent.batches >= 2 * (EVENTS // 4)
            assert sender.unacked_batches() == EVENTS // 4
        await assert_everything_delivered(tmp_path, sender)


class Slow(ingest_pb2_grpc.IngestServiceServicer):
    """Answers every batch (stored), one at a time, `delay` seconds each: an agent working
    through a backlog slower than the hook sends."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.streams = 0
        self.stored: set[int] = set()

    async def Stream(self, request_iterator: AsyncIterator[pb.Batch],
                     context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.streams += 1
        async for batch in request_iterator:
            await asyncio.sleep(self.delay)
            self.stored.add(batch.seq)
            await context.write(ingest_pb2.IngestReply(ack=ingest_pb2.Ack(
                source_id=batch.source_id, seq=batch.seq, epoch=batch.epoch)))


async def test_an_agent_that_answers_slower_than_the_hook_sends_is_not_cut_off(
        tmp_path: Path) -> None:
    """The ack deadline is for an agent that stopped answering. One that answers every
    batch, only slower than they come (here the last of 10 waits ~1 s for its answer, past a
    300 ms deadline), keeps its stream: cutting it would resend the whole window every
    deadline and the agent would start over from the oldest batch each time."""
    socket = tmp_path / "ingest.sock"
    slow = Slow(delay=0.1)
    with running_sender(socket, batch_events=4, ack_timeout_ms=300) as (sender, buffer):
        async with ingest_server(socket, slow):
            for i in range(EVENTS):
                buffer.offer(finished(i))
            assert await asyncio.to_thread(sender.flush, 30.0)
            assert slow.stored == set(range(1, EVENTS // 4 + 1))
            assert (sender.stats.ack_timeouts, slow.streams) == (0, 1)


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.OK])
async def test_a_stream_ended_by_the_agent_makes_the_sender_reconnect_and_resend(
        tmp_path: Path, code: grpc.StatusCode) -> None:
    socket = tmp_path / "ingest.sock"
    ends = EndsAfterOneBatch(code)
    # A deadline far away: the sender must notice the status itself, not time out.
    with running_sender(socket, batch_events=4, ack_timeout_ms=600_000) as (sender, buffer):
        async with ingest_server(socket, ends):
            for i in range(EVENTS):
                buffer.offer(finished(i))
            await until(lambda: sender.stats.stream_ends.get(code.name, 0) >= 3
                        and ends.streams >= 3, "three streams ended by the agent")
            assert sender.stats.ack_timeouts == 0
            assert sender.unacked_batches() == EVENTS // 4
        await assert_everything_delivered(tmp_path, sender)


class RefusingProxy(ingest_pb2_grpc.IngestServiceServicer):
    """Refuses chosen seqs once with a reason; forwards every other batch to the real agent
    and relays its answer."""

    def __init__(self, upstream: Path, refuse: dict[int, int]) -> None:
        self.upstream = upstream
        self.refuse = dict(refuse)
        self.received: list[pb.Batch] = []

    async def Stream(self, request_iterator: AsyncIterator[pb.Batch],
                     context: grpc.aio.ServicerContext[Any, Any]) -> None:
        async with Hook(self.upstream) as up:
            async for batch in request_iterator:
                self.received.append(batch)
                reason = self.refuse.pop(batch.seq, None)
                if reason is not None:
                    await context.write(ingest_pb2.IngestReply(ack=ingest_pb2.Ack(
                        source_id=batch.source_id, seq=batch.seq, epoch=batch.epoch,
                        refused=True, refusal=reason, reason="chosen by the test")))
                    continue
                await up.outbox.put(batch)
                await context.write(await up.next("ack"))


async def test_permanent_refusals_are_dropped_counted_and_named_retriable_ones_resent(
        tmp_path: Path) -> None:
    socket = tmp_path / "ingest.sock"
    refuse = {3: ingest_pb2.REFUSAL_REASON_INVALID, 7: ingest_pb2.REFUSAL_REASON_TOO_BIG,
              5: ingest_pb2.REFUSAL_REASON_DISK_FULL, 9: ingest_pb2.REFUSAL_REASON_SHUTTING_DOWN}
    with running_sender(socket, batch_events=1, ack_timeout_ms=10_000) as (sender, buffer):
        async with agent(tmp_path / "a") as (handle, _):
            proxy = RefusingProxy(tmp_path / "a" / "ingest.sock", refuse)
            async with ingest_server(socket, proxy):
                for i in range(EVENTS):
                    buffer.offer(finished(i))
                assert await asyncio.to_thread(sender.flush, 15.0)
            stats = await query(handle).GetStats(query_pb2.StatsRequest())
            dropped = dict(stats.hook_dropped_by_reason)
            assert dropped == {"refused_invalid": 1, "refused_too_big": 1, "missing_batches": 2}
            # Delivered plus counted drops is what was sent.
            assert stats.events_ingested + dropped["refused_invalid"] + \
                dropped["refused_too_big"] == EVENTS
            page = await query(handle).ListTrails(query_pb2.ListTrailsRequest(page_size=1000))
            # Seqs 3 and 7 carried events 2 and 6; the retriable refusals were resent.
            assert {t.request_id for t in page.trails} == request_ids(EVENTS) - {"req0002",
                                                                                  "req0006"}
    assert sender.stats.batches_dropped == 2
    assert sender.stats.events_refused == {"refused_invalid": 1, "refused_too_big": 1}
    assert sender.stats.batches_refused == 4
    named = [(b.gap.first_missing_seq, b.gap.last_missing_seq) for b in proxy.received
             if b.gap.first_missing_seq]
    assert sorted(set(named)) == [(3, 3), (7, 7)] or sorted(set(named)) == [(3, 7)]
    # Every batch carried this sender's epoch: random, non-zero, 63 bits.
    assert {b.epoch for b in proxy.received} == {sender.epoch}
    assert 0 < sender.epoch < 2**63
