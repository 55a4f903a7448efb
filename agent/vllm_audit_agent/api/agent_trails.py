"""The agent's `TrailSource` (trail_source.py): its trail store and index in memory, its record
log on disk.

Pages come from the trail index (trails/index.py) newest first; the cursor is the index
position of the last trail handed out (8 bytes), so pages stay stable while trails arrive and
go. Export reads the record log, not the store: a trail deleted from the store or evicted from
memory is still exported, exactly as stored (sealed content stays sealed).

Pages, trails and watches show sealed content opened with the content key store
(records/content.py): the prompt and output while their key lives, `content.erased` (and why)
once it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Generator, Iterable, Iterator, Sequence
from typing import Any

import grpc
import orjson

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.errors import ApiError
from vllm_audit_agent.api.scope import record_matches
from vllm_audit_agent.api.trail_source import StoredTrail
from vllm_audit_agent.api.usage import sum_summaries
from vllm_audit_agent.model.record import message_to_dict
from vllm_audit_agent.records.chain import RECORD_TYPE_REQUEST
from vllm_audit_agent.records.content import open_fields
from vllm_audit_agent.records.content_keys import ContentKeyStore
from vllm_audit_agent.state import AgentState
from vllm_audit_agent.trails.index import Filter, TrailIndex, Watch

#: Records per export chunk (one gRPC message / one write of the HTTP stream), and records
#: scanned per step of the export's reader thread (bounds how long one step holds a thread).
EXPORT_CHUNK_RECORDS = 500
EXPORT_CHUNK_BYTES = 1 << 20  # well under gRPC's default 4 MiB message cap
EXPORT_SCAN_RECORDS = 20_000


class AgentTrailSource:
    def __init__(self, state: AgentState, index: TrailIndex) -> None:
        self.state = state
        self.index = index

    def page(self, f: Filter, cursor: bytes, size: int) -> tuple[list[q.TrailSummary], bytes]:
        page, next_seq = self.index.page(f, int.from_bytes(cursor, "big") if cursor else 0, size)
        keys = self.state.content_keys
        return ([open_summary(s, keys) for s in page],
                next_seq.to_bytes(8, "big") if next_seq else b"")

    def get(self, trail_id: str, tenant: str | None) -> StoredTrail | None:
        trail = self.state.trails.get(trail_id)
        if trail is None or (tenant is not None and trail.tenant != tenant):
            return None
        return StoredTrail(open_summary(trail.summary, self.state.content_keys), trail.events)

    async def export(self, f: Filter) -> AsyncGenerator[list[bytes], None]:
        """The record log read in a worker thread a step at a time (the WAL's reader copes
        with the writer appending meanwhile), up to what was durable when the export began."""
        records = self.state.records
        upto = records.durable_seq
        scan = _scan(records.wal.replay(), f, upto)
        try:
            while True:
                try:
                    chunk = await asyncio.to_thread(next, scan, None)
                except OSError as exc:  # e.g. retention deleted a segment as it was opened
                    raise ApiError(grpc.StatusCode.UNAVAILABLE,
                                   f"the record log could not be read ({exc}); retry the "
                                   "export") from None
                if chunk is None:
                    return
                if chunk:
                    yield chunk
        finally:
            # Cancelled while the thread is inside the generator: it is dropped when done.
            with contextlib.suppress(ValueError):
                scan.close()

    def watch(self, f: Filter) -> Watch:
        return self.index.watch(f)

    def unwatch(self, watch: Watch) -> None:
        self.index.unwatch(watch)

    def shown(self, summary: q.TrailSummary) -> q.TrailSummary:
        """Opened at the moment it is sent (a watch may lag: the key may be gone since)."""
        keys = self.state.content_keys
        if keys is None or not summary.content.scheme:
            return summary
        copy = q.TrailSummary()
        copy.CopyFrom(summary)  # the watches share the snapshot
        return open_summary(copy, keys)

    def final(self, f: Filter) -> Iterable[q.TrailSummary]:
        return self.index.final(f)

    def usage(self, f: Filter, keys: Sequence[str]) -> list[dict[str, Any]]:
        """Over the final trails in memory (the last --max-trails): the fleet service has the
        months."""
        return sum_summaries(self.index.final(f), keys)


def open_summary(summary: q.TrailSummary, keys: ContentKeyStore | None) -> q.TrailSummary:
    """A fresh summary with its sealed content opened, or marked erased (in place)."""
    if keys is None or not summary.content.scheme:
        return summary
    view = open_fields({"request_id": summary.request_id,
                        "content": message_to_dict(summary.content)}, keys)
    if view["content"].get("erased"):
        summary.content.CopyFrom(q.SealedContent(**view["content"]))
    else:
        summary.prompt = view.get("prompt", summary.prompt)
        summary.output = view.get("output", summary.output)
    return summary


def _scan(payloads: Iterator[tuple[int, bytes]], f: Filter, upto: int
          ) -> Generator[list[bytes], None, None]:
    """Yields chunks of matching request payloads; an empty chunk after a long stretch
    without a match, so each step of the reader thread stays short."""
    chunk: list[bytes] = []
    scanned = size = 0
    try:
        for _, payload in payloads:
            record = orjson.loads(payload)
            if int(record.get("seq", 0)) > upto:
                break
            scanned += 1
            if record.get("type") == RECORD_TYPE_REQUEST and record_matches(f, record):
                chunk.append(payload)
                size += len(payload)
            if len(chunk) >= EXPORT_CHUNK_RECORDS or size >= EXPORT_CHUNK_BYTES or \
                    scanned >= EXPORT_SCAN_RECORDS:
                yield chunk
                chunk, scanned, size = [], 0, 0
        if chunk:
            yield chunk
    finally:
        close = getattr(payloads, "close", None)
        if close is not None:
            close()
