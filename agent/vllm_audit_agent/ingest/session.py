"""One connected hook stream: its ordered replies and its bound on unanswered batches."""

from __future__ import annotations

import asyncio
import time

from vllm_audit.v1 import ingest_pb2

#: Batches read from one ingest stream but not yet answered, at most (service.py pipelines).
PIPELINE_DEPTH = 8


class Session:
    """One connected hook stream; config pushes go through `push`."""

    def __init__(self) -> None:
        #: Replies in order: config pushes, refusals, and the store units whose result is
        #: the answer (service.py pipelines a stream: the writer awaits each in turn).
        self.outbox: asyncio.Queue[
            ingest_pb2.IngestReply | asyncio.Future[ingest_pb2.IngestReply]] = asyncio.Queue()
        #: Batches of this stream read but not yet answered (bounded: PIPELINE_DEPTH).
        self.unanswered = asyncio.Semaphore(PIPELINE_DEPTH)
        #: A store unit of this stream failed: the stream ends with a status.
        self.failure: BaseException | None = None
        #: The handler is still reading the stream (the writer may interrupt it).
        self.reading = True
        #: Set by ingest from the stream's batches (the level report is per source).
        self.source_id = ""
        self.connected_at = time.monotonic()

    def push(self, reply: ingest_pb2.IngestReply) -> None:
        self.outbox.put_nowait(reply)
