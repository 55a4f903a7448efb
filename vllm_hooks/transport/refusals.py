"""What the hook does with a refused batch, by `vllm_audit.v1.RefusalReason`.

The proto enum is the definition of the reasons; the names of the hook's drop counters derive
from it (`REFUSAL_REASON_TOO_BIG` -> `refused_too_big`). Retriable reasons (the agent's disk or
WAL, its shutdown) keep the batch for a retry; permanent ones (sending the same bytes again
cannot succeed) drop it at once, counted. A reason this hook does not know (a newer agent) is
treated as retriable: retries are paced and bounded by the unacked byte cap, so it cannot
wedge the sender, while dropping would lose data the agent might still take.
"""

from __future__ import annotations

from vllm_audit.v1 import ingest_pb2

PERMANENT = frozenset({ingest_pb2.REFUSAL_REASON_INVALID, ingest_pb2.REFUSAL_REASON_TOO_BIG})
_PREFIX = "REFUSAL_REASON_"


def is_permanent(reason: int) -> bool:
    return reason in PERMANENT


def drop_reason(reason: int) -> str:
    """The drop-counter name for events of a batch refused for `reason`."""
    try:
        name = ingest_pb2.RefusalReason.Name(reason)
    except ValueError:
        return f"refused_{reason}"
    return "refused_" + name.removeprefix(_PREFIX).lower()


#: The drop reasons a permanent refusal can produce (born at 0 in the sender's stats).
PERMANENT_DROP_REASONS = tuple(drop_reason(r) for r in sorted(PERMANENT))
