"""Real record logs with sealed segments, small enough for a test: summary-like requests in
64 KiB segments (a few frames each), written through RecordLog and sealed as its writer does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vllm_audit_agent.records.chain import Signer
from vllm_audit_agent.records.log import RecordLog

SEGMENT_BYTES = 64 << 10


def request(i: int) -> dict[str, Any]:
    # Like a summary record: mostly the same fields, a few that change.
    return {"schema": 1, "request_id": f"req-{i}", "trail_id": f"req-{i}", "latency_ms": 12.5,
            "model": "tiny", "user": f"user-{i % 7}", "prompt": "the same prompt " * 40}


def open_log(path: Path, signer: Signer, **kw: Any) -> RecordLog:
    return RecordLog(path, 1 << 30, "batch", signer, checkpoint_every=50,
                     segment_bytes=SEGMENT_BYTES, **kw)


async def write_log(path: Path, signer: Signer, n: int, seal: bool = True) -> RecordLog:
    """A stopped log of `n` requests: sealed segments (unless `seal` is False), then an open
    one with records."""
    log = open_log(path, signer, seal_segments=seal)
    for i in range(n):
        log.append(request(i))
        if i % 40 == 39:
            await log.write_pending()
    log.record_level("AUDIT_LEVEL_SUMMARY", "test")
    log.checkpoint()
    await log.write_pending()
    while await log.seal_finished() is not None:
        pass
    log.close()
    return log
