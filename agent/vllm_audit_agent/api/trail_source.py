"""The seam between the query API and the store it reads: `TrailSource`.

The same servicers (query.py, http_api.py through reads.py) answer for one agent, reading its
trails in memory and its record log (agent_trails.py), and for a fleet, reading the fleet's
store of every agent's records (fleet/api_source.py). What differs between the two is only
this: how a page of summaries is found and what its cursor is, how one trail is fetched, how
records are exported, how new records reach a watch, and how usage is summed. Roles, tenant
scope, page tokens, limits and meta-audit stay in the API, once, for both.

A cursor is opaque bytes (b"" when there is no further page): the agent's is a position in its
trail index, a fleet's the (timestamp, event id) of the last record handed out. The API seals
it to the caller and its filters (page_tokens.py) before it leaves the process.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.trails.index import Filter, Watch

#: What `TrailSource.usage` may group by (AggregatesRequest.group_by).
USAGE_KEYS = ("tenant", "user", "model", "day")


@dataclass(frozen=True)
class StoredTrail:
    """One trail as a source holds it: its summary and its events (serialised pb.Event; the
    fleet keeps those a record carries, its grammar events)."""
    summary: q.TrailSummary
    events: Sequence[bytes]


class TrailSource(Protocol):
    def page(self, f: Filter, cursor: bytes, size: int) -> tuple[list[q.TrailSummary], bytes]:
        """Up to `size` matching summaries, newest first, after `cursor` (b"": from the
        newest), and the cursor of the next page (b"": none). Synchronous: a page is built
        without awaiting."""
        ...

    def get(self, trail_id: str, tenant: str | None) -> StoredTrail | None:
        """The trail (its newest revision), None when unknown or of a tenant other than
        `tenant` (None: any tenant)."""
        ...

    def export(self, f: Filter) -> AsyncGenerator[list[bytes], None]:
        """Chunks of the matching request records, oldest first, each exactly as stored;
        raises ApiError(UNAVAILABLE) when the store cannot be read."""
        ...

    def watch(self, f: Filter) -> Watch:
        """A queue of the records stored from now on that match (a watch's stream)."""
        ...

    def unwatch(self, watch: Watch) -> None: ...

    def shown(self, summary: q.TrailSummary) -> q.TrailSummary:
        """A watched summary (shared by every watch: never changed) as the caller sees it:
        its sealed content as `page` and `get` show it (opened, erased, or as stored)."""
        ...

    def final(self, f: Filter) -> Iterable[q.TrailSummary]:
        """Matching final trails already stored, oldest first (a watch's replay). Taken
        right after `watch`, without awaiting: nothing is missed or sent twice."""
        ...

    def usage(self, f: Filter, keys: Sequence[str]) -> list[dict[str, Any]]:
        """Per distinct value of `keys` (of USAGE_KEYS): `requests`, `input_tokens`,
        `output_tokens`, `errors` of the matching final trails, with the keys' values."""
        ...
