"""What the sender counts (`SenderStats`): batches and events sent, answered, refused or dropped,
and the state of its stream; read by tests, benchmarks and the fault harness.

Its own module because both sides of the sender write it: the batch making (`sender`) and the
stream's answers (`stream`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_hooks.transport import refusals


@dataclass
class SenderStats:
    batches_sent: int = 0
    batches_acked: int = 0
    #: Refusals of any reason; the permanent ones also count in `batches_dropped`.
    batches_refused: int = 0
    #: Batches given up: refused-and-kept past the byte cap, or refused permanently.
    batches_dropped: int = 0
    events_sent: int = 0
    #: Events of batches refused for a permanent reason, by drop reason (also in the gap
    #: marker that follows); born at 0 for every permanent reason.
    events_refused: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(refusals.PERMANENT_DROP_REASONS, 0))
    #: Events cut to fit the per-batch byte cap and sent marked `truncated` (not a drop).
    events_truncated: int = 0
    reconnects: int = 0
    #: Streams cancelled because the oldest unanswered batch passed `ack_timeout_ms`.
    ack_timeouts: int = 0
    #: Streams the agent side ended, by gRPC status name ("OK" for a clean end).
    stream_ends: dict[str, int] = field(default_factory=dict)
    connected: bool = False
