"""The closed sets of reasons the agent's labelled counters use: one definition per set.

Every labelled counter family is exported with a sample for every reason of its set from the
start (at 0), so `increase()` over it sees the first loss. Sets with a proto enum are derived
from the enum; the others are one tuple here. A reason outside its set (a newer hook sending
a reason this agent does not know) is counted under OTHER, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from vllm_audit.v1 import ingest_pb2
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.delivery.sink import DEAD_LETTER_REASONS, FAILURE_REASONS
from vllm_audit_agent.records.retention import EXPIRY_REASONS

OTHER = "other"


def enum_reasons(enum: EnumTypeWrapper, prefix: str) -> tuple[str, ...]:
    """`REFUSAL_REASON_WAL_FULL` -> `wal_full`; the UNSPECIFIED (0) value is not a reason."""
    return tuple(name[len(prefix):].lower() for name, number in enum.items() if number != 0)


#: Why the agent refused a batch (the hook keeps retriable ones): the contract's enum.
REFUSAL_REASONS = enum_reasons(ingest_pb2.RefusalReason, "REFUSAL_REASON_")
#: Final trail states (ACTIVE is not final).
FINAL_TRAIL_STATES = tuple(s for s in enum_reasons(q.TrailState, "TRAIL_STATE_") if s != "active")
#: Events a hook could not deliver, by the reason its gap marker names
#: (vllm_hooks/transport/buffer.py, vllm_hooks/transport/sender.py). `missing_batches` (whole
#: batches) and `internal_error.*` (error counts) are other units and go to their own families.
HOOK_EVENT_DROP_REASONS = ("buffer_full", "unacked_overflow", "convert_error", OTHER)
#: Gap-marker keys of the hook's swallowed internal errors start with this.
HOOK_INTERNAL_ERROR_PREFIX = "internal_error."
#: The agent's own key for batches a hook reported lost (a range of seqs never stored).
HOOK_MISSING_BATCHES = "missing_batches"
#: Batches the agent lost (AgentState.agent_dropped keys): bytes on a stream that were not a
#: Batch, WAL records (one per batch) found damaged or impossible to apply at replay (kept in
#: quarantine/), and quarantine copies that could not be written. Refusals (invalid and
#: too_big included) have their own enum and family.
AGENT_BATCH_DROP_REASONS = ("malformed_batches", "wal_damaged_records",
                            "replay_quarantined_batches", "replay_quarantine_failed", OTHER)
#: AgentState.agent_dropped keys counted in bytes, each exported as its own family.
AGENT_BYTE_DROP_KEYS = ("wal_torn_tail_bytes", "wal_damaged_bytes")
#: AgentState.agent_dropped keys counted in events, each exported as its own family.
AGENT_EVENT_DROP_KEYS = ("events_without_body",)
#: Audit records that left the agent without reaching Kafka, by reason: parked in the
#: dead-letter file (too large or invalid for the broker; kept, counted, never released).
#: Telemetry is counted apart (ENGINE_STATS_LOSS_REASONS): an alert on audit-record loss pages
#: someone, and must not fire for a lost engine-stats snapshot.
PUBLISHER_RECORD_LOSS_REASONS = tuple(f"dead_letter_{r}" for r in DEAD_LETTER_REASONS)
#: Engine-stats snapshots (telemetry, not audit records) lost on their bounded best-effort
#: path: the queue was full, or the broker failed the send.
ENGINE_STATS_LOSS_REASONS = ("queue_full", "send_failed")
#: Why a send to the broker failed (each is retried, or dead-lettered when permanent).
PUBLISHER_FAILURE_REASONS = FAILURE_REASONS
#: Why a record-log segment was deleted (size: the archive at its cap; age: retention).
RECORD_LOG_EXPIRY_REASONS = EXPIRY_REASONS
#: Why the hook dropped a step's allowed-token set: over its per-step or per-trail size cap,
#: or rows waiting for its sender thread over the backlog cap
#: (StructuredOutputSummary.allowed_sets_over_{step_cap,trail_cap,backlog}).
ALLOWED_SET_DROP_REASONS = ("step_cap", "trail_cap", "backlog")
#: Why a trail left memory.
TRAIL_EVICTION_REASONS = ("final", "active")
#: What became, at start, of a trail the WAL replay rebuilt open whose newest record the
#: record log already held (trails.remember_recorded): continued as that record (forced), or
#: dropped as a fragment of a record written whole.
TRAIL_REBUILT_RECORDED_OUTCOMES = ("continued", "fragment_dropped")


def closed(values: Mapping[str, int], reasons: Iterable[str]) -> dict[str, int]:
    """`values` over the closed set `reasons`: every reason present (0 when absent), anything
    else summed under OTHER when the set has it."""
    known = tuple(reasons)
    out = dict.fromkeys(known, 0)
    for key, n in values.items():
        if key in out:
            out[key] += n
        elif OTHER in out:
            out[OTHER] += n
    return out


def publisher_losses(dead_lettered: Mapping[str, int]) -> dict[str, int]:
    """The publisher's audit-record losses over PUBLISHER_RECORD_LOSS_REASONS."""
    return {f"dead_letter_{r}": n for r, n in dead_lettered.items()}


def engine_stats_losses(counters: Mapping[str, int]) -> dict[str, int]:
    """The engine-stats snapshots lost, over ENGINE_STATS_LOSS_REASONS (publisher counters)."""
    return {"queue_full": counters.get("stats_dropped_queue_full", 0),
            "send_failed": counters.get("stats_failed", 0)}
