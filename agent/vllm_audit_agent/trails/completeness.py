"""When a trail is complete, and what its record says when it is written without a half.

A trail is *complete* when an offline request finished, or when a served request has its
HTTP half and every engine half finished (an HTTP error needs no engine half). Once one half
is complete the other has `linger_seconds` to arrive; past that the trail is recorded anyway,
saying which half is missing (`incomplete`, `finalised_by=LINGER`, state INCOMPLETE when the
engine half is the missing one). A trail pushed out of memory is recorded with
`finalised_by=EVICTION`. Events that arrive after a record was written produce a *revision*:
the same trail id with the next `revision`, decided again with what is known then, so a
consumer keeps the newest revision and never mistakes a forced record for the real one.
"""

from __future__ import annotations

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.model.trail import Trail

FINAL = (q.TRAIL_STATE_FINISHED, q.TRAIL_STATE_ABORTED, q.TRAIL_STATE_FAILED,
         q.TRAIL_STATE_INCOMPLETE)
_HTTP: tuple[int, ...] = (q.TRAIL_HALF_HTTP,)
_ENGINE: tuple[int, ...] = (q.TRAIL_HALF_ENGINE,)
_BOTH: tuple[int, ...] = (q.TRAIL_HALF_HTTP, q.TRAIL_HALF_ENGINE)
#: The counter of each way a trail can be forced (`finalised_by_linger`, …).
FINALISED_BY_COUNTER = {v.number: f"finalised_by_{v.name[len('FINALISED_BY_'):].lower()}"
                        for v in q.FinalisedBy.DESCRIPTOR.values}


def state_name(state: int) -> str:
    return q.TrailState.Name(state)[len("TRAIL_STATE_"):].lower()


def missing_halves(trail: Trail) -> tuple[int, ...]:
    """The halves not (yet) complete; empty when the trail is complete."""
    http_missing = trail.expects_http and not trail.has_http
    refused = trail.has_http and trail.status_code >= 400  # no engine half comes
    engine_missing = not refused and not trail.engine_done()
    if http_missing:
        return _BOTH if engine_missing else _HTTP
    return _ENGINE if engine_missing else ()


def settle(trail: Trail, missing: tuple[int, ...], forced_by: int) -> bool:
    """Sets on the trail what its record (or next revision) says: its state, the halves
    `missing` and why it is written without them (`forced_by`, when any is missing); returns
    whether the record is a revision."""
    revision = trail.published
    if revision:
        trail.revision += 1
    if trail.state == q.TRAIL_STATE_INCOMPLETE:
        trail.state = q.TRAIL_STATE_ACTIVE  # a revision: decide again with what is known now
    if trail.state == q.TRAIL_STATE_ACTIVE:
        trail.state = (q.TRAIL_STATE_INCOMPLETE if q.TRAIL_HALF_ENGINE in missing
                       else q.TRAIL_STATE_FINISHED)
    trail.incomplete = missing
    trail.finalised_by = forced_by if missing else q.FINALISED_BY_COMPLETE
    trail.published = True
    trail.pending_revision = False
    # Its linger is over (a late half starts another): a final trail keeps no float.
    trail.half_complete_at = None
    return revision
