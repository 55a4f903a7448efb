"""What /readyz answers: the agent is serving, and each condition the operator asked for.

Readiness of a sidecar is the pod's readiness: a not-ready agent takes the whole vLLM pod out
of its Service. So the conditions are a policy (`--ready-requires`), not a fixed rule:

- `wal_writable` (default): the disk accepts appends. While the file system refuses them
  (ENOSPC, I/O errors) every batch is refused and nothing can be audited.
- `wal_not_full`: the WAL is below its cap (batches are refused at the cap; the hooks keep
  them, bounded, and then drop and count).
- `kafka_connected`: with Kafka configured, the publisher is connected (records pile up in
  the log while it is not; nothing is lost until the log's cap).

/readyz always lists every condition with its state, so an operator sees why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vllm_audit_agent.config import CONDITIONS

if TYPE_CHECKING:
    from vllm_audit_agent.state import AgentState

def readiness(state: AgentState) -> tuple[bool, str]:
    """(ready, a text body with one `name: ok|failing (required|informational)` line each)."""
    lines = [f"serving: {'ok' if state.ready else 'failing'} (required)"]
    ready = state.ready
    wal = state.wal
    checks = {
        "wal_writable": wal.healthy and state.ingest_healthy,
        "wal_not_full": wal.size < wal.max_bytes * 0.99,
        "kafka_connected": state.config.kafka_bootstrap is None or state.publisher.connected,
    }
    for name in CONDITIONS:
        ok = checks[name]
        required = name in state.config.ready_requires
        if required and not ok:
            ready = False
        lines.append(f"{name}: {'ok' if ok else 'failing'} "
                     f"({'required' if required else 'informational'})")
    return ready, "\n".join(lines) + "\n"
