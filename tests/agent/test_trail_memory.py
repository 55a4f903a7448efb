"""The trail store is bounded in bytes, not only in count, and says how big it is.

At level full a trail holds one event per grammar step; a count cap alone let the default
100k trails grow to ~9 GiB. Real agent, real gRPC over its Unix socket.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.agent_harness import Hook, agent, lifecycle, published_keys, query
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2

CAP = 64 << 10
STEPS = 200  # grammar steps per request: ~4 KiB of serialised events per trail


def full_level_request(i: int) -> list[pb.Event]:
    rid = f"req{i:04d}-abcdefgh"
    t = 10**18 + i * 10**9
    events = [lifecycle(rid, pb.LIFECYCLE_PHASE_ADDED, t, num_prompt_tokens=8)]
    events += [pb.Event(time_unix_nano=t + s, request_id=rid,
                        so_step=pb.StructuredOutputStep(step=s, accepted_tokens=[s % 97],
                                                        allowed_tokens=1000 + s, accepted=True))
               for s in range(STEPS)]
    events.append(lifecycle(rid, pb.LIFECYCLE_PHASE_FINISHED, t + STEPS + 1,
                            num_prompt_tokens=8, num_output_tokens=STEPS, finish_reason="stop"))
    return events


async def test_trail_memory_is_capped_in_bytes_and_evictions_are_counted(tmp_path: Path) -> None:
    async with agent(tmp_path, max_trail_bytes=CAP) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        store = handle.state.trails
        for i in range(60):
            reply = await hook.send(i + 1, *full_level_request(i))
            assert not reply.ack.refused
            # The cap holds after every batch, and the running total is the true sum.
            assert store.bytes <= CAP
            assert store.bytes == sum(t.nbytes for t in store.trails())
        # Every trail was recorded (and so published) whole before its memory was reclaimed.
        assert len(await published_keys(published, 60)) == 60
        assert store.counters["evicted_final"] == 60 - len(store)
        assert store.counters["evicted_final"] > 0
        # A trail accounts at least its serialised events.
        newest = store.trails()[-1]
        assert newest.nbytes >= sum(map(len, newest.events)) > STEPS * 10
        stats = await query(handle).GetStats(query_pb2.StatsRequest())
        assert stats.trail_store_bytes == store.bytes > 0
        assert stats.trails_evicted == store.counters["evicted_final"]
        # Events come back parsed, whole, in order.
        trail = await query(handle).GetTrail(query_pb2.GetTrailRequest(
            request_id=newest.summary.request_id, include_events=True))
        steps = [e.so_step.step for e in trail.events if e.WhichOneof("body") == "so_step"]
        assert steps == list(range(STEPS))


async def test_active_trails_pushed_out_by_bytes_are_still_recorded(tmp_path: Path) -> None:
    async with agent(tmp_path, max_trail_bytes=CAP) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        store = handle.state.trails
        for i in range(40):  # requests that never finish: every trail stays active
            await hook.send(i + 1, *full_level_request(i)[:-1])
        assert store.bytes <= CAP
        evicted = store.counters["evicted_active"]
        assert evicted > 0
        # Nothing vanished: each evicted active trail was handed on with what it had.
        assert len(await published_keys(published, evicted)) == evicted
        assert len(store) + evicted == 40
