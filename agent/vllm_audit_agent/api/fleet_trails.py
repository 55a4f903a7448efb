"""The fleet's `TrailSource` (trail_source.py): the query API over a FleetStore (fleet/store.py),
every pod's records in ClickHouse, so the servicers that answer for one agent answer for the
fleet with the same roles, tenant scope, page tokens, limits and meta-audit.

- **Pages**: the store's newest-revision-per-trail listing, newest first; the cursor is the
  (timestamp_ms, event_id) of the last trail handed out (8 bytes and the id), sealed by the
  API. Filters the store has no column for (finish_reason, grammar backend, structured only,
  the exact creation window) are checked on each record, fetching on until the page is full.
- **Windows**: the store's time column is the record's timestamp (its finish, else its
  creation), the API's `since`/`until` are on creation: `since` narrows the store's scan as is
  (a record is never stamped before it was created), `until` with UNTIL_SLACK_MS more, and
  the exact window is checked per record. Aggregates take the window on the timestamp.
- **Watch**: `WatchedStore` tells watches of the request records this process stores (the
  fleet service's consumer inserts through it); a record re-delivered by Kafka is told once.
  With several fleet replicas a watch sees the partitions its replica consumes.
- **Reads run in a worker thread** (`FleetApi`): a query over months must not stall the event
  loop that serves the other calls and the consumer's commits.
- **Content**: the fleet holds no content keys, so it never shows sealed content: pages, trails
  and watches show the ciphertext while the key may live and `content.erased` (and why) once
  the log's erasure records say it is gone (fleet/erasures.py); exports stay as stored. Reading
  content is the agent's (its query API, `vllm-audit export --open-content`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import orjson
from google.protobuf import json_format

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.agent_trails import EXPORT_CHUNK_BYTES, EXPORT_CHUNK_RECORDS
from vllm_audit_agent.api.errors import ApiError
from vllm_audit_agent.api.page_tokens import PageTokens
from vllm_audit_agent.api.reads import TrailReads
from vllm_audit_agent.api.scope import STATE_NAMES, record_matches
from vllm_audit_agent.api.trail_source import StoredTrail
from vllm_audit_agent.api.usage import PriceTable
from vllm_audit_agent.fleet.erasures import FleetErasures
from vllm_audit_agent.fleet.store import Cursor, FleetStore, TrailQuery
from vllm_audit_agent.records.chain import RECORD_TYPE_REQUEST
from vllm_audit_agent.trails.index import WATCH_QUEUE, Filter, Watch, record_kind

if TYPE_CHECKING:  # the fleet extra's; this room is installed without it in the agent's image
    import pyarrow as pa

#: Stored trails a watch's replay sends first (the newest, oldest first): a fleet holds months.
WATCH_REPLAY = 1000
#: A trail created before `until` but stamped (finished) this much later is still found.
UNTIL_SLACK_MS = 86_400_000
#: Event ids remembered to tell watches of a re-delivered record only once.
TOLD_IDS = 100_000
#: Records a listing fetches per store query while post-filters drop some.
FETCH_MIN = 64


def summary_of(record: dict[str, Any]) -> q.TrailSummary:
    """The summary a request record holds (its fields are the summary's, enums by name)."""
    return json_format.ParseDict(record, q.TrailSummary(), ignore_unknown_fields=True)


def events_of(record: dict[str, Any]) -> list[bytes]:
    """The events a record carries whole (its grammar events, level full and above)."""
    return [json_format.ParseDict(e, pb.Event(), ignore_unknown_fields=True).SerializeToString()
            for e in record.get("grammar_events") or ()]


def query_of(f: Filter, window_slack: bool = True) -> TrailQuery:
    """The store's query for the filter's columns (the rest is checked per record)."""
    until = f.until_unix_ms + (UNTIL_SLACK_MS if window_slack else 0) if f.until_unix_ms else None
    return TrailQuery(tenant=f.tenant or None, user=f.user or None, model=f.model or None,
                      state=STATE_NAMES[f.state] if f.state else None,
                      client_request_id=f.client_request_id or None,
                      since_ms=f.since_unix_ms or None, until_ms=until)


def _cursor_bytes(cursor: Cursor) -> bytes:
    return cursor[0].to_bytes(8, "big", signed=True) + cursor[1].encode()


def _cursor_of(raw: bytes) -> Cursor:
    return int.from_bytes(raw[:8], "big", signed=True), raw[8:].decode()


class StoreWatches:
    """The watches of one process, told of the request records it stores (from any thread),
    their sealed content shown as `erasures` tells (erased or as stored)."""

    def __init__(self, erasures: FleetErasures | None = None) -> None:
        self.erasures = erasures
        self.watches: set[Watch] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._told: OrderedDict[str, None] = OrderedDict()

    def add(self, f: Filter, maxsize: int = WATCH_QUEUE) -> Watch:
        self._loop = asyncio.get_running_loop()
        watch = Watch(f, maxsize)
        self.watches.add(watch)
        return watch

    def remove(self, watch: Watch) -> None:
        self.watches.discard(watch)

    def stored(self, payloads: Sequence[bytes]) -> None:
        """After the store has `payloads`: queues their request records for the watches."""
        loop = self._loop
        if not self.watches or loop is None or loop.is_closed():
            return
        events: list[tuple[int, q.TrailSummary]] = []
        for payload in payloads:
            try:
                record = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue  # the store skipped it too
            if not isinstance(record, dict) or record.get("type") != RECORD_TYPE_REQUEST:
                continue
            event_id = str(record.get("event_id") or "")
            if event_id in self._told:
                continue  # re-delivered (at-least-once): told already
            self._told[event_id] = None
            if len(self._told) > TOLD_IDS:
                self._told.popitem(last=False)
            summary = summary_of(self.erasures.view(record) if self.erasures else record)
            events.append((record_kind(summary.revision), summary))
        if events:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._offer, events)

    def _offer(self, events: list[tuple[int, q.TrailSummary]]) -> None:
        for watch in list(self.watches):
            for kind, summary in events:
                if not watch.overflowed and watch.filter.matches(summary):
                    watch.offer(kind, summary)


class WatchedStore(FleetStore):
    """A FleetStore that tells the API's watches what it stored (the consumer inserts through
    it: `WatchedStore.open(...)` in place of `FleetStore.open(...)`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.erasures = FleetErasures(self)
        self.watches = StoreWatches(self.erasures)

    def insert_rows(self, payloads: Sequence[bytes], data: pa.Table) -> int:
        written = super().insert_rows(payloads, data)
        if any(b'"type":"erasure"' in p for p in payloads):
            self.erasures.note(_erasures_in(payloads))
        self.watches.stored(payloads)
        return written


def _erasures_in(payloads: Sequence[bytes]) -> list[dict[str, Any]]:
    out = []
    for payload in payloads:
        if b'"type":"erasure"' in payload:
            with contextlib.suppress(orjson.JSONDecodeError):
                out.append(orjson.loads(payload))
    return out


class FleetTrailSource:
    def __init__(self, store: FleetStore, watches: StoreWatches | None = None) -> None:
        self.store = store
        erasures = getattr(store, "erasures", None)
        self.erasures = erasures if isinstance(erasures, FleetErasures) else FleetErasures(store)
        self.watches = watches if watches is not None else getattr(store, "watches", None) \
            or StoreWatches(self.erasures)

    def page(self, f: Filter, cursor: bytes, size: int) -> tuple[list[q.TrailSummary], bytes]:
        query, before = query_of(f), _cursor_of(cursor) if cursor else None
        out: list[q.TrailSummary] = []
        last: Cursor | None = None
        fetch = max(FETCH_MIN, size + 1)
        while True:
            batch = self.store.list_trails(query, fetch, before)
            for record in batch:
                before = (int(record.get("timestamp_ms") or 0), str(record.get("event_id") or ""))
                if not record_matches(f, record):
                    continue
                if len(out) == size:  # one more exists: the next page starts after `last`
                    return out, _cursor_bytes(last) if last is not None else b""
                out.append(summary_of(self.erasures.view(record)))
                last = before
            if len(batch) < fetch:
                return out, b""

    def get(self, trail_id: str, tenant: str | None) -> StoredTrail | None:
        record = self.store.get_trail(trail_id, tenant)
        if record is None:
            return None
        return StoredTrail(summary_of(self.erasures.view(record)), events_of(record))

    async def export(self, f: Filter) -> AsyncGenerator[list[bytes], None]:
        """The store's request records (every revision), oldest first, read in a worker
        thread a chunk at a time."""
        chunks = _chunks(self.store, f)
        try:
            while True:
                try:
                    chunk = await asyncio.to_thread(next, chunks, None)
                except Exception as exc:  # the store's engine failed: the caller retries
                    raise ApiError(grpc.StatusCode.UNAVAILABLE,
                                   f"the fleet store could not be read ({exc}); retry the "
                                   "export") from None
                if chunk is None:
                    return
                if chunk:
                    yield chunk
        finally:
            with contextlib.suppress(ValueError):  # still running in its thread: dropped then
                chunks.close()

    def watch(self, f: Filter) -> Watch:
        return self.watches.add(f)

    def unwatch(self, watch: Watch) -> None:
        self.watches.remove(watch)

    def shown(self, summary: q.TrailSummary) -> q.TrailSummary:
        return summary  # its content was shown as the erasures say when it was read

    def final(self, f: Filter) -> Iterable[q.TrailSummary]:
        newest, _ = self.page(f, b"", WATCH_REPLAY)
        return reversed(newest)

    def usage(self, f: Filter, keys: Sequence[str]) -> list[dict[str, Any]]:
        """The store's sums over the trails `f` selects, grouped by `keys`."""
        return self.store.aggregates(query_of(f, window_slack=False), keys)


def _chunks(store: FleetStore, f: Filter) -> Generator[list[bytes], None, None]:
    chunk: list[bytes] = []
    size = 0
    for payload in store.export(query_of(f)):
        if not record_matches(f, orjson.loads(payload)):
            continue
        chunk.append(payload)
        size += len(payload)
        if len(chunk) >= EXPORT_CHUNK_RECORDS or size >= EXPORT_CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class FleetApi:
    """The fleet's QueryApi (reads.py): the agent's reads (`TrailReads`) over the fleet store,
    each store query run in a worker thread (the caller's identity goes with it: to_thread
    copies the context)."""

    def __init__(self, store: FleetStore, page_tokens: PageTokens | None = None,
                 prices: PriceTable | None = None) -> None:
        self.reads = TrailReads(FleetTrailSource(store), page_tokens, prices)
        self.store = store
        self.started = time.monotonic()

    def health(self) -> q.HealthResponse:
        return q.HealthResponse(status="SERVING", uptime_s=time.monotonic() - self.started,
                                kafka_configured=True, kafka_connected=True)

    async def stats(self) -> q.StatsResponse:
        """What a fleet has of the agent's stats: the trails stored (newest revision each)."""
        rows = await asyncio.to_thread(self.store.aggregates, TrailQuery(), ())
        return q.StatsResponse(trails_finished=int(rows[0]["requests"]) if rows else 0)

    async def list_trails(self, request: q.ListTrailsRequest) -> q.ListTrailsResponse:
        return await asyncio.to_thread(self.reads.list_trails, request)

    async def get_trail(self, request: q.GetTrailRequest) -> q.GetTrailResponse:
        return await asyncio.to_thread(self.reads.get_trail, request)

    async def aggregates(self, request: q.AggregatesRequest) -> q.AggregatesResponse:
        return await asyncio.to_thread(self.reads.aggregates, request)

    def export(self, request: q.ExportTrailsRequest) -> AsyncGenerator[list[bytes], None]:
        return self.reads.export(request)

    def watch(self, request: q.WatchTrailsRequest) -> AsyncIterator[q.WatchTrailsResponse]:
        return self.reads.watch(request)
