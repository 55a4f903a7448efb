"""IngestService: hooks stream batches in; the agent answers every one. (`ReadAudit`, the
in-response audit read back by a hook, is read_back.py.)

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

A stream is pipelined: the next batch is read and validated while the one before is in its
store unit (waiting on the WAL's sync in a worker thread), up to session.PIPELINE_DEPTH batches
unanswered per stream; the replies still go out in the order the batches came, and store
units still run one at a time in that order (the lock is FIFO). Waiting for each batch's
sync before reading the next left the loop idle for the sync's whole duration (~2.5 ms per
2048-event batch on this machine's disk: a fifth of a single stream's ingest time).

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
import logging
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, ingest_pb2_grpc
from vllm_audit_agent.control.level import LevelControl
from vllm_audit_agent.ingest.ledger import DISK_REFUSALS, REFUSAL_REASONS, IngestLedger
from vllm_audit_agent.ingest.read_back import check_request, read_audit
from vllm_audit_agent.ingest.session import Session
from vllm_audit_agent.model.validation import Verdict, validate
from vllm_audit_agent.storage.wal import WalRefused

logger = logging.getLogger("vllm_audit.agent")

#: How long a failing stream waits for its queued replies to go out before its status.
_FLUSH_BEFORE_ABORT_S = 1.0
#: How long a stream the client closed waits for its last replies to go out.
_DRAIN_ON_END_S = 5.0


def _ack(batch: pb.Batch, **kw: Any) -> ingest_pb2.IngestReply:
    return ingest_pb2.IngestReply(ack=ingest_pb2.Ack(
        source_id=batch.source_id, seq=batch.seq, epoch=batch.epoch, **kw))


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """`sessions`: the live set of connected streams (level control pushes to it);
    `errors`: the agent's count of swallowed internal errors."""

    def __init__(self, ledger: IngestLedger, levels: LevelControl, sessions: set[Session],
                 errors: Counter[str], max_batch_bytes: int) -> None:
        self.ledger = ledger
        self.levels = levels
        self.sessions = sessions
        self.errors = errors
        self.max_batch_bytes = max_batch_bytes

    async def Stream(
        self, request_iterator: AsyncIterator[pb.Batch], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        session = Session()
        self.sessions.add(session)
        handler = asyncio.current_task()
        assert handler is not None
        writer = asyncio.create_task(self._write(session, context, handler))
        session.push(self.levels.hook_config())
        failure, code = "", grpc.StatusCode.INTERNAL
        try:
            try:
                async for batch in request_iterator:
                    session.source_id = batch.source_id  # metrics: which sources are connected
                    await session.unanswered.acquire()  # released by the writer
                    started = self.begin(batch)
                    if not isinstance(started, asyncio.Task):
                        session.unanswered.release()  # answered already (a refusal)
                    session.outbox.put_nowait(started)
            finally:
                session.reading = False
            # The client closed its side: what it sent is still answered (bounded).
            await self._drain(session, writer, _DRAIN_ON_END_S)
        except asyncio.CancelledError:
            if session.failure is None:
                raise
            handler.uncancel()  # the writer found a failed store unit: handled below
        except DecodeError as exc:
            # Bytes that are not a Batch carry no seq to refuse: the stream ends instead.
            self.ledger.agent_dropped["malformed_batches"] += 1
            failure, code = f"a message on this stream is not a Batch: {exc}", \
                grpc.StatusCode.INVALID_ARGUMENT
        except Exception as exc:
            self.errors["ingest.stream"] += 1
            logger.exception("ingest stream failed: %r", exc)
            failure = f"agent error while handling the stream: {type(exc).__name__}: {exc}"
        finally:
            self.sessions.discard(session)
            unit_error = session.failure
            if unit_error is not None and not failure:
                self.errors["ingest.stream"] += 1
                logger.error("ingest stream failed: %r", unit_error, exc_info=unit_error)
                failure = ("agent error while handling the stream: "
                           f"{type(unit_error).__name__}: {unit_error}")
            if failure:
                # Replies already decided go out first; then the status ends the stream.
                await self._drain(session, writer, _FLUSH_BEFORE_ABORT_S)
            writer.cancel()
        if failure:
            await context.abort(code, failure)

    @staticmethod
    async def _drain(session: Session, writer: asyncio.Task[None], timeout: float) -> None:
        """Waits (bounded) until the writer answered what is queued, or stopped."""
        joined = asyncio.ensure_future(session.outbox.join())
        try:
            await asyncio.wait((joined, writer), timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            joined.cancel()

    @staticmethod
    async def _write(session: Session, context: grpc.aio.ServicerContext[Any, Any],
                     handler: asyncio.Task[Any]) -> None:
        """Writes the replies in order, waiting for each batch's store unit. A unit that
        failed ends the stream: its error goes to the handler, which ends the stream with a
        status; what was queued after it is not answered (the status is the answer: the hook
        resends, and what was stored is acked as a duplicate)."""
        while True:
            item = await session.outbox.get()
            try:
                if session.failure is not None:
                    continue
                if isinstance(item, asyncio.Future):
                    try:
                        # Shielded: cancelling this writer must not cancel the unit.
                        reply = await asyncio.shield(item)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        session.failure = exc
                        if session.reading:  # else the handler sees it once drained
                            handler.cancel()
                        continue
                    finally:
                        session.unanswered.release()
                else:
                    reply = item
                await context.write(reply)
            finally:
                session.outbox.task_done()

    async def ReadAudit(self, request: ingest_pb2.ReadAuditRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> ingest_pb2.ReadAuditReply:
        """A hook reads back the structured-output audit of a request its vLLM served
        (read_back.py says who may read what)."""
        problem = check_request(request)
        if problem:
            self.ledger.counters["read_audit_invalid"] += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        reply = read_audit(request, self.ledger.trails, self.ledger.sources)
        if reply is None:
            self.ledger.counters["read_audit_not_found"] += 1
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                "no trail of these ids that this vLLM wrote")
        self.ledger.counters["read_audit_answered"] += 1
        return reply

    def begin(self, batch: pb.Batch) -> ingest_pb2.IngestReply | asyncio.Task[ingest_pb2.IngestReply]:
        """Validates `batch` and starts its store unit: a refusal, or the unit whose result is
        the answer (an ack or a duplicate ack, or a refusal from the WAL)."""
        ledger = self.ledger
        if ledger.stopping:
            return self._refuse(batch, "shutting_down", "the agent is shutting down")
        verdict = validate(batch, self.max_batch_bytes)
        if verdict.refusal:
            logger.warning("refused batch %r/%d/%d (%s): %s", batch.source_id[:64],
                           batch.epoch, batch.seq, verdict.refusal, verdict.detail)
            return self._refuse(batch, verdict.refusal, verdict.detail)
        # The unit runs to its end even if this stream is cancelled meanwhile.
        task = asyncio.create_task(self._store(batch, verdict))
        ledger.pending_stores.add(task)
        task.add_done_callback(self._store_done)
        return task

    async def handle(self, batch: pb.Batch) -> ingest_pb2.IngestReply:
        """The answer to one batch: an ack, a duplicate ack or a refusal with its reason."""
        started = self.begin(batch)
        if isinstance(started, asyncio.Task):
            return await asyncio.shield(started)
        return started

    def _store_done(self, task: asyncio.Task[ingest_pb2.IngestReply]) -> None:
        self.ledger.pending_stores.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors["ingest.apply"] += 1

    def _refuse(self, batch: pb.Batch, reason: str, detail: str) -> ingest_pb2.IngestReply:
        self.ledger.counters[f"refused_batches_{reason}"] += 1
        return _ack(batch, refused=True, refusal=REFUSAL_REASONS[reason],
                    reason=f"{reason}: {detail}")

    async def _store(self, batch: pb.Batch, verdict: Verdict) -> ingest_pb2.IngestReply:
        ledger = self.ledger
        async with ledger.wal_lock:
            if ledger.window(batch).seen(batch.seq):
                ledger.counters["duplicate_batches"] += 1
                return _ack(batch, duplicate=True)
            payload = batch.SerializeToString()
            try:
                segment = await asyncio.to_thread(self._append, payload)
            except WalRefused as exc:
                reason = exc.reason if exc.reason in REFUSAL_REASONS else "disk_error"
                if reason in DISK_REFUSALS:
                    ledger.healthy = False
                return self._refuse(batch, reason, str(exc) or reason)
            ledger.healthy = True
            ledger.mark_stored(batch)
            ledger.clamped_fields.update(verdict.clamped)
            ledger.agent_dropped["events_without_body"] += verdict.dropped_events
            # An exception here ends the stream with INTERNAL; the batch is stored and marked,
            # so its resend is acked as a duplicate and a replay applies it again.
            ledger.apply_batch(batch, segment, verdict.events)
        return _ack(batch)

    def _append(self, payload: bytes) -> int:
        wal = self.ledger.wal
        segment = wal.append(payload)
        if wal.fsync == "batch":
            wal.sync()
        return segment


def replay_wal(ledger: IngestLedger, quarantine_dir: Path) -> int:
    """Rebuilds trails and de-duplication state from the WAL at start. Returns batches applied.

    Never raises on a record: one that does not parse, fails validation or fails to apply is
    counted (agent_dropped replay_quarantined_batches) and kept in <data_dir>/quarantine/;
    a second copy of a (source_id, epoch, seq) is skipped (counters wal_replay_duplicates)."""
    n = 0
    for index, (segment, payload) in enumerate(ledger.wal.replay()):
        try:
            batch = pb.Batch.FromString(payload)
            verdict = validate(batch, max_batch_bytes=sys.maxsize)  # stored under an older cap
            if verdict.refusal:
                raise ValueError(f"{verdict.refusal}: {verdict.detail}")
            if ledger.window(batch).seen(batch.seq):
                ledger.counters["wal_replay_duplicates"] += 1
                continue
            ledger.mark_stored(batch)
            ledger.clamped_fields.update(verdict.clamped)
            ledger.agent_dropped["events_without_body"] += verdict.dropped_events
            ledger.apply_batch(batch, segment, verdict.events)
            n += 1
        except Exception as exc:
            logger.error("WAL record %d of segment %d cannot be replayed (%r); quarantined",
                         index, segment, exc)
            _quarantine(ledger, quarantine_dir, f"replay-{segment:08d}-{index:08d}.batch", payload)
    ledger.counters["wal_replayed_batches"] = n
    return n


def _quarantine(ledger: IngestLedger, directory: Path, name: str, payload: bytes) -> None:
    ledger.agent_dropped["replay_quarantined_batches"] += 1
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
    except OSError as exc:
        ledger.agent_dropped["replay_quarantine_failed"] += 1
        logger.error("could not keep quarantined record %s: %r", name, exc)
