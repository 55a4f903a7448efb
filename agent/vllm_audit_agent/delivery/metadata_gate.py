"""After a broken connection, no record goes to the broker before its metadata was read again.

Why: a broker that came back on lost storage (a wiped volume, a topic deleted and recreated)
may no longer know the topics this producer writes to. aiokafka re-sends the batches of the
broken connection as soon as it reconnects, and asks for metadata in the background; the
metadata request made while the broker was down failed, so the first requests on the new
connection are produce requests for topics the broker forgot. The test broker (Tansu 0.6.0)
acknowledges those, and hides them when the next Metadata request creates the topic anew —
records acknowledged to the agent and readable by no one (tests/faults/
test_broker_restarted_empty.py). A metadata response first recreates the topic (where the
broker auto-creates topics) or fails the produce with a retriable error (where it does not), so
the acknowledgement that follows is one a consumer can read; ack_check.py then sees the offsets
start again and the publisher re-sends what was lost from the record log.

Cost: one metadata round trip after each closed connection, none in steady state.

This wraps two methods of aiokafka's client (`send`, `_on_connection_closed`): aiokafka has no
hook for "before a produce request"; the version is pinned by the lock file and the fault test
breaks if the wrapped methods change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("vllm_audit.agent")

#: Kafka's API key of a Produce request.
PRODUCE_API_KEY = 0


@dataclass
class GateCounts:
    """Kept by the sink across its producers (one gate each)."""

    #: Metadata reads made before a produce request because a connection had closed.
    rereads: int = 0
    #: Produce requests failed (retriable, re-sent by aiokafka) because that read failed.
    refused: int = 0


class MetadataGate:
    """Installed on an AIOKafkaClient before the producer starts (every connection it opens
    then reports its closing here)."""

    def __init__(self, client: Any, counts: GateCounts) -> None:
        self._client = client
        self.counts = counts
        #: A connection closed since the last metadata response: the next produce waits.
        self.stale = False
        closed: Callable[[Any, Any], None] = client._on_connection_closed
        send: Callable[..., Any] = client.send

        def on_connection_closed(conn: Any, reason: Any) -> None:
            self.stale = True
            closed(conn, reason)

        async def gated_send(node_id: Any, request: Any, **kwargs: Any) -> Any:
            if self.stale and getattr(request, "API_KEY", None) == PRODUCE_API_KEY:
                await self._refresh()
            return await send(node_id, request, **kwargs)

        client._on_connection_closed = on_connection_closed
        client.send = gated_send

    async def _refresh(self) -> None:
        from aiokafka.errors import KafkaConnectionError

        # Cleared before the read: a connection closing during it sets it again.
        self.stale = False
        if not await self._client.force_metadata_update():
            self.stale = True
            self.counts.refused += 1
            raise KafkaConnectionError("metadata not read again after a closed connection")
        self.counts.rereads += 1
