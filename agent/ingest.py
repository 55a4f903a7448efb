"""IngestService: hooks stream batches in; the agent acks each one once it is in the WAL.

Order per batch: de-duplicate by (source_id, seq) -> WAL append + sync (worker thread) ->
apply to trails -> ack. A full WAL refuses the batch (an ack with `refused`): the hook keeps it
and retries it; the hook never drops a batch the agent has not answered.
Configuration (the audit level) is pushed on connect and whenever it changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, ingest_pb2_grpc

from .state import AgentState, Session
from .wal import WalFull

logger = logging.getLogger("vllm_audit.agent")


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, state: AgentState) -> None:
        self.state = state

    async def Stream(
        self, request_iterator: AsyncIterator[pb.Batch], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        state = self.state
        session = Session()
        state.sessions.add(session)
        writer = asyncio.create_task(self._write(session, context))
        session.outbox.put_nowait(state.hook_config())
        try:
            async for batch in request_iterator:
                session.source_id = batch.source_id  # metrics: which sources are connected
                reply = await self.handle(batch)
                if reply is not None:
                    session.outbox.put_nowait(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state.errors["ingest.stream"] += 1
            logger.exception("ingest stream failed: %r", exc)
        finally:
            state.sessions.discard(session)
            writer.cancel()

    @staticmethod
    async def _write(session: Session, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        while True:
            reply = await session.outbox.get()
            await context.write(reply)

    async def handle(self, batch: pb.Batch) -> ingest_pb2.IngestReply | None:
        state = self.state
        if not batch.source_id or batch.seq == 0:
            state.agent_dropped["invalid_batch"] += 1
            logger.warning("rejected batch without source_id/seq (source=%r seq=%d)",
                           batch.source_id, batch.seq)
            return None
        source = state.source(batch.source_id)
        if source.seen(batch.seq):
            state.counters["duplicate_batches"] += 1
            return ingest_pb2.IngestReply(
                ack=ingest_pb2.Ack(source_id=batch.source_id, seq=batch.seq, duplicate=True))
        payload = batch.SerializeToString()
        try:
            async with state.wal_lock:
                segment = await asyncio.to_thread(self._append, payload)
        except WalFull:
            # Not stored, so not acknowledged: the hook keeps the batch and retries it.
            state.counters["refused_batches_wal_full"] += 1
            return ingest_pb2.IngestReply(ack=ingest_pb2.Ack(
                source_id=batch.source_id, seq=batch.seq, refused=True, reason="wal_full"))
        source.mark(batch.seq)
        try:
            state.apply_batch(batch, segment)
        except Exception as exc:
            state.errors["ingest.apply"] += 1
            logger.exception("applying batch %s/%d failed: %r", batch.source_id, batch.seq, exc)
        return ingest_pb2.IngestReply(ack=ingest_pb2.Ack(source_id=batch.source_id, seq=batch.seq))

    def _append(self, payload: bytes) -> int:
        wal = self.state.wal
        segment = wal.append(payload)
        if wal.fsync == "batch":
            wal.sync()
        return segment


def replay_wal(state: AgentState) -> int:
    """Rebuilds trails and de-duplication state from the WAL at start. Returns batches read."""
    n = 0
    for segment, payload in state.wal.replay():
        batch = pb.Batch.FromString(payload)
        state.source(batch.source_id).mark(batch.seq)
        state.apply_batch(batch, segment)
        n += 1
    state.counters["wal_replayed_batches"] = n
    return n
