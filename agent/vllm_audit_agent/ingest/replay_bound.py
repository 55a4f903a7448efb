"""How far back the record log's start must look so that replaying the ingest WAL records no
trail twice: a lower bound on when the oldest batch the WAL replays arrived.

Why the oldest event time of the WAL's first batch bounds every record the replay could meet:
the WAL is written in the order batches arrive, so every batch it replays arrived after the
first one; an event is stamped before it is sent, by a process on the agent's node (one
real-time clock), so the first batch arrived after its oldest event's time; and a trail is
recorded only after its events arrived. A record of a replayed trail is therefore stamped
(`recorded_unix_ms`) at or after that time. REPLAY_BOUND_SLACK_MS absorbs a clock step
between the stamps.

Who this does not hold for: a hook whose events carry a time in the future (a wrong clock or
a hostile process) would move the bound past records the replay meets, and those trails would
be recorded again (a second record under the same event id). A bound later than now is
therefore not trusted: the start falls back to its count (footers.RECALL_RECORDS), as it does
when no batch at the WAL's start can be read.
"""

from __future__ import annotations

import time
from itertools import islice

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.storage.wal_reader import WalReader

#: Clock steps between an event's stamp and its record's, absorbed by looking back further.
REPLAY_BOUND_SLACK_MS = 30_000
#: Batches at the WAL's start read for a time before giving up (a batch of gap markers only,
#: or damaged ones, carries none).
BOUND_BATCHES = 64


def recall_since_ms(wal: WalReader, now_ms: int | None = None) -> int | None:
    """The bound in Unix ms (now when the WAL replays nothing), or None when it cannot be
    trusted (see the module's docstring): the record log's start then reads back by count."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    seen_any = False
    for _, payload in islice(wal.replay(), BOUND_BATCHES):
        seen_any = True
        try:
            batch = pb.Batch.FromString(payload)
        except Exception:  # a record replay_wal quarantines: the next one bounds as well
            continue
        stamps = [event.time_unix_nano for event in batch.events if event.time_unix_nano > 0]
        if stamps:
            oldest = min(stamps) // 1_000_000
            return oldest - REPLAY_BOUND_SLACK_MS if oldest <= now + REPLAY_BOUND_SLACK_MS \
                else None
    return None if seen_any else now
