"""IngestService: hooks stream batches in; the agent answers every one.

Per batch, in order:
1. Shutting down -> refused `shutting_down` (retriable: the hook keeps the batch).
2. Validation (validation.py) -> refused `invalid` / `too_big` (permanent: the hook drops and
   counts it), or accepted with repaired fields counted. Ack.reason names what was wrong.
3. The store unit, under one lock and shielded from cancellation: de-duplicate on
   (source_id, epoch, seq) -> WAL append + sync (worker thread) -> mark -> apply to trails
   (epoch 0, from a hook older than epochs, is one more epoch: see sources.py).
   A WAL refusal (WalRefused) refuses the batch with its reason (retriable). Because the
   check and the mark sit in one unit, the same batch sent on two streams at once is stored
   once; because the unit is shielded, a cancelled stream never leaves a batch appended but
   unmarked.
4. The ack (Ack.epoch echoes the batch's epoch).

Bytes that do not parse as a Batch end the stream with INVALID_ARGUMENT (counted in
agent_dropped malformed_batches). An unexpected exception ends the stream with INTERNAL and a
message (counted in errors["ingest.stream"]): the hook sees a status, reconnects and resends
what it has not had acked; what was stored is then acked as a duplicate. Configuration (the
audit level) is pushed on connect and whenever it changes.

Replay at start re-validates and de-duplicates every WAL record; one that cannot be parsed,
fails validation or fails to apply is counted and its payload kept in <data_dir>/quarantine/,
never a reason to exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, ingest_pb2_grpc

from .state import DISK_REFUSALS, REFUSAL_REASONS, AgentState, Session
from .validation import Verdict, validate
from .wal import WalRefused

logger = logging.getLogger("vllm_audit.agent")

#: How long a failing stream waits for its queued replies to go out before its status.
_FLUSH_BEFORE_ABORT_S = 1.0


def _ack(batch: pb.Batch, **kw: Any) -> ingest_pb2.IngestReply:
    return ingest_pb2.IngestReply(ack=ingest_pb2.Ack(
        source_id=batch.source_id, seq=batch.seq, epoch=batch.epoch, **kw))


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
        failure, code = "", grpc.StatusCode.INTERNAL
        try:
            async for batch in request_iterator:
                session.source_id = batch.source_id  # metrics: which sources are connected
                session.outbox.put_nowait(await self.handle(batch))
        except asyncio.CancelledError:
            raise
        except DecodeError as exc:
            # Bytes that are not a Batch carry no seq to refuse: the stream ends instead.
            state.agent_dropped["malformed_batches"] += 1
            failure, code = f"a message on this stream is not a Batch: {exc}", \
                grpc.StatusCode.INVALID_ARGUMENT
        except Exception as exc:
            state.errors["ingest.stream"] += 1
            logger.exception("ingest stream failed: %r", exc)
            failure = f"agent error while handling the stream: {type(exc).__name__}: {exc}"
        finally:
            state.sessions.discard(session)
            if failure:
                # Replies already decided go out first; then the status ends the stream.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.outbox.join(), _FLUSH_BEFORE_ABORT_S)
            writer.cancel()
        if failure:
            await context.abort(code, failure)

    @staticmethod
    async def _write(session: Session, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        while True:
            reply = await session.outbox.get()
            try:
                await context.write(reply)
            finally:
                session.outbox.task_done()

    async def handle(self, batch: pb.Batch) -> ingest_pb2.IngestReply:
        """The answer to one batch: an ack, a duplicate ack or a refusal with its reason."""
        state = self.state
        if state.stopping:
            return self._refuse(batch, "shutting_down", "the agent is shutting down")
        verdict = validate(batch, state.config.max_batch_bytes)
        if verdict.refusal:
            logger.warning("refused batch %r/%d/%d (%s): %s", batch.source_id[:64],
                           batch.epoch, batch.seq, verdict.refusal, verdict.detail)
            return self._refuse(batch, verdict.refusal, verdict.detail)
        # The unit runs to its end even if this stream is cancelled meanwhile.
        task = asyncio.create_task(self._store(batch, verdict))
        state.pending_stores.add(task)
        task.add_done_callback(self._store_done)
        return await asyncio.shield(task)

    def _store_done(self, task: asyncio.Task[ingest_pb2.IngestReply]) -> None:
        self.state.pending_stores.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.state.errors["ingest.apply"] += 1

    def _refuse(self, batch: pb.Batch, reason: str, detail: str) -> ingest_pb2.IngestReply:
        self.state.counters[f"refused_batches_{reason}"] += 1
        return _ack(batch, refused=True, refusal=REFUSAL_REASONS[reason],  # type: ignore[arg-type]
                    reason=f"{reason}: {detail}")

    async def _store(self, batch: pb.Batch, verdict: Verdict) -> ingest_pb2.IngestReply:
        state = self.state
        async with state.wal_lock:
            if state.window(batch).seen(batch.seq):
                state.counters["duplicate_batches"] += 1
                return _ack(batch, duplicate=True)
            payload = batch.SerializeToString()
            try:
                segment = await asyncio.to_thread(self._append, payload)
            except WalRefused as exc:
                reason = exc.reason if exc.reason in REFUSAL_REASONS else "disk_error"
                if reason in DISK_REFUSALS:
                    state.ingest_healthy = False
                return self._refuse(batch, reason, str(exc) or reason)
            state.ingest_healthy = True
            state.mark_stored(batch)
            state.clamped_fields.update(verdict.clamped)
            state.agent_dropped["events_without_body"] += verdict.dropped_events
            # An exception here ends the stream with INTERNAL; the batch is stored and marked,
            # so its resend is acked as a duplicate and a replay applies it again.
            state.apply_batch(batch, segment)
        return _ack(batch)

    def _append(self, payload: bytes) -> int:
        wal = self.state.wal
        segment = wal.append(payload)
        if wal.fsync == "batch":
            wal.sync()
        return segment


def replay_wal(state: AgentState) -> int:
    """Rebuilds trails and de-duplication state from the WAL at start. Returns batches applied.

    Never raises on a record: one that does not parse, fails validation or fails to apply is
    counted (agent_dropped replay_quarantined_batches) and kept in <data_dir>/quarantine/;
    a second copy of a (source_id, epoch, seq) is skipped (counters wal_replay_duplicates)."""
    n = 0
    for index, (segment, payload) in enumerate(state.wal.replay()):
        try:
            batch = pb.Batch.FromString(payload)
            verdict = validate(batch, max_batch_bytes=sys.maxsize)  # stored under an older cap
            if verdict.refusal:
                raise ValueError(f"{verdict.refusal}: {verdict.detail}")
            if state.window(batch).seen(batch.seq):
                state.counters["wal_replay_duplicates"] += 1
                continue
            state.mark_stored(batch)
            state.clamped_fields.update(verdict.clamped)
            state.agent_dropped["events_without_body"] += verdict.dropped_events
            state.apply_batch(batch, segment)
            n += 1
        except Exception as exc:
            logger.error("WAL record %d of segment %d cannot be replayed (%r); quarantined",
                         index, segment, exc)
            _quarantine(state, f"replay-{segment:08d}-{index:08d}.batch", payload)
    state.counters["wal_replayed_batches"] = n
    return n


def _quarantine(state: AgentState, name: str, payload: bytes) -> None:
    state.agent_dropped["replay_quarantined_batches"] += 1
    directory: Path = state.config.data_dir / "quarantine"
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
    except OSError as exc:
        state.agent_dropped["replay_quarantine_failed"] += 1
        logger.error("could not keep quarantined record %s: %r", name, exc)
