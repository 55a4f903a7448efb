"""Batches cut by bytes, and oversize events truncated, through the real sender to the real agent.

Before the per-batch byte cap, `capture_prompt=full` with 100 requests of 50 KB prompts made one
~5 MB batch that the transport refused on every resend: 0 of 1,100 events arrived, forever.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.agent_harness import agent, query
from tests.support.sender_harness import running_sender
from vllm_audit.v1 import query_pb2
from vllm_hooks.config.env_vars import DEFAULT_MAX_BATCH_BYTES
from vllm_hooks.events import raw_events as raw

PHASES = (1, 2, 2, 2, 2, 2, 2, 2, 2, 5)  # added, scheduled x8, finished: 10 engine events


def http(rid: str, prompt: str) -> tuple[object, ...]:
    return (raw.HTTP, 10**18, rid, {"method": "POST", "path": "/v1/completions",
                                    "status_code": 200, "prompt": prompt, "output": "ok"})


def lifecycle(rid: str, phase: int, t: int) -> tuple[object, ...]:
    return (raw.LIFECYCLE, 10**18 + t, rid, phase, 3, 5, "", "", 16, False)




async def test_many_large_prompts_are_cut_into_batches_and_all_delivered(tmp_path: Path) -> None:
    prompt = "p" * 50_000
    with running_sender(tmp_path / "ingest.sock", buffer_events=4096, role="api_server",
                        flush_ms=20, capture_prompt="full", capture_output="full") as (sender, buffer):
        async with agent(tmp_path) as (handle, _):
            for i in range(100):
                rid = f"req{i:03d}"
                buffer.offer(http(rid, prompt))
                for t, phase in enumerate(PHASES):
                    buffer.offer(lifecycle(rid, phase, t))
            assert await asyncio.to_thread(sender.flush, 30.0)
            stats = await query(handle).GetStats(query_pb2.StatsRequest())
            assert stats.events_ingested == 1_100
            assert dict(stats.hook_dropped_by_reason) == {}
            # ~5 MB in batches of at most 1 MiB, none of it cut.
            assert sender.stats.batches_sent >= 5
            assert sender.stats.events_truncated == 0
            # Whole: the trail's record sealed it (its event keeps no clear text since), and
            # the query API opens it.
            trail = await query(handle).GetTrail(query_pb2.GetTrailRequest(request_id="req042"))
            assert trail.summary.prompt == prompt


async def test_a_prompt_over_the_batch_cap_is_delivered_truncated_and_marked(
        tmp_path: Path) -> None:
    prompt = "\u00e9" * 3_000_000  # 6 MB of two-byte UTF-8 characters
    with running_sender(tmp_path / "ingest.sock", buffer_events=4096, role="api_server",
                        flush_ms=20, capture_prompt="full", capture_output="full") as (sender, buffer):
        async with agent(tmp_path) as (handle, _):
            buffer.offer(http("big", prompt))
            buffer.offer(lifecycle("after", 5, 0))  # what follows is not blocked
            assert await asyncio.to_thread(sender.flush, 30.0)
            stats = await query(handle).GetStats(query_pb2.StatsRequest())
            assert stats.events_ingested == 2
            assert dict(stats.hook_dropped_by_reason) == {}
            assert sender.stats.events_truncated == 1
            trail = await query(handle).GetTrail(query_pb2.GetTrailRequest(
                request_id="big", include_events=True))
            (event,) = trail.events
            assert event.truncated
            cut = event.http.prompt
            # Cut to fit the cap, on a character boundary, and no shorter than it had to be.
            assert prompt.startswith(cut)
            assert DEFAULT_MAX_BATCH_BYTES - 4096 < len(cut.encode()) < DEFAULT_MAX_BATCH_BYTES
            assert event.http.output == "ok"
