"""Trail identity, completeness and revisions (issue 7): a trail is never keyed on what the
client chose, a slow request is recorded whole, a forced record says what it lacks, and a
half that arrives late is a revision with its own event_id, never a silent drop.

Real agent in-process, real gRPC over its Unix socket; the linger runs on the agent's own
sweeper.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.agent.test_metrics import samples
from tests.support.agent_harness import Hook, agent, lifecycle, query, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.model.record import record_from_fields
from vllm_audit_agent.trails.store import TrailStore

T0 = 10**18


def http(trail: str, status: int = 200, client_id: str = "", user: str = "alice") -> pb.Event:
    return pb.Event(time_unix_nano=T0, request_id=trail, http=pb.HttpRequest(
        status_code=status, model="m", user=user, prompt_tokens=3, completion_tokens=5,
        client_request_id=client_id, method="POST", path="/v1/chat/completions"))


def engine(trail: str, phase: int, **kw: Any) -> pb.Event:
    return lifecycle(f"chatcmpl-{trail}-1a2b3c4d", phase, T0 + 1, **kw)


def records(published: Any) -> list[dict[str, Any]]:
    return [r for topic, _, r in published.records if topic == "requests"]


async def test_one_client_request_id_on_two_requests_gives_two_trails(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        for seq, (trail, user) in enumerate((("t-one", "alice"), ("t-two", "mallory")), 1):
            await hook.send(seq, http(trail, client_id="same-header", user=user),
                            engine(trail, pb.LIFECYCLE_PHASE_FINISHED, finish_reason="stop"))
        await until(lambda: len(records(published)) == 2, "two records")
        got = records(published)
        assert sorted((r["trail_id"], r["user"]) for r in got) == [("t-one", "alice"),
                                                                  ("t-two", "mallory")]
        assert {r["client_request_id"] for r in got} == {"same-header"}
        page = await query(handle).ListTrails(q.ListTrailsRequest(client_request_id="same-header"))
        assert len(page.trails) == 2


async def test_linger_counts_from_the_first_complete_half(tmp_path: Path) -> None:
    async with agent(tmp_path, linger_seconds=0.3) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        await hook.send(1, engine("slow", pb.LIFECYCLE_PHASE_ADDED, num_prompt_tokens=3))
        await asyncio.sleep(1.0)  # a request running longer than the linger
        assert not records(published)
        await hook.send(2, engine("slow", pb.LIFECYCLE_PHASE_FINISHED, finish_reason="stop"))
        await asyncio.sleep(0.1)
        await hook.send(3, http("slow"))
        await until(lambda: len(records(published)) == 1, "the record")
        (record,) = records(published)
        assert record["finalised_by"] == "FINALISED_BY_COMPLETE"
        assert record["incomplete"] == []
        assert (record["user"], record["status_code"], record["state"]) == (
            "alice", 200, "TRAIL_STATE_FINISHED")


async def test_a_late_half_becomes_a_revision_with_its_own_event_id(tmp_path: Path) -> None:
    async with agent(tmp_path, linger_seconds=0.2) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        await hook.send(1, engine("late", pb.LIFECYCLE_PHASE_FINISHED, finish_reason="stop",
                                  num_output_tokens=5))
        await until(lambda: len(records(published)) == 1, "the forced record")
        forced = records(published)[0]
        assert forced["finalised_by"] == "FINALISED_BY_LINGER"
        assert forced["incomplete"] == ["TRAIL_HALF_HTTP"]
        assert forced["state"] == "TRAIL_STATE_FINISHED" and forced["user"] == ""
        await hook.send(2, http("late"))  # the HTTP half, after the record was written
        await until(lambda: len(records(published)) == 2, "the revision")
        revised = records(published)[1]
        assert (revised["revision"], revised["finalised_by"], revised["user"]) == (
            1, "FINALISED_BY_COMPLETE", "alice")
        assert forced["event_id"] == "late/0" and revised["event_id"] == "late/1"
        assert handle.state.trails.counters["late_events"] == 1


async def test_the_late_half_of_a_forced_trail_that_left_memory_gives_a_whole_revision(
        tmp_path: Path) -> None:
    """A forced trail is the first the store's cap evicts; its late half must still meet
    the half that came first, so the newest revision (what a consumer keeps) is whole."""
    async with agent(tmp_path, linger_seconds=0.2, max_trails=2) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        await hook.send(1, engine("late", pb.LIFECYCLE_PHASE_ADDED, num_prompt_tokens=3,
                                  max_tokens=64),
                        engine("late", pb.LIFECYCLE_PHASE_FINISHED, finish_reason="length",
                               num_prompt_tokens=3, num_output_tokens=5))
        await until(lambda: len(records(published)) == 1, "the forced record")
        for seq, other in enumerate(("o1", "o2"), 2):  # push "late" out of memory
            await hook.send(seq, engine(other, pb.LIFECYCLE_PHASE_FINISHED), http(other))
        await until(lambda: handle.state.trails.get("late") is None, "late evicted")
        await hook.send(4, http("late", user="bob"))
        await until(lambda: len([r for r in records(published) if r["trail_id"] == "late"]) == 2,
                    "the revision")
        revised = [r for r in records(published) if r["trail_id"] == "late"][1]
        assert (revised["revision"], revised["finalised_by"], revised["incomplete"]) == (
            1, "FINALISED_BY_COMPLETE", [])
        assert (revised["user"], revised["finish_reason"], revised["max_tokens"],
                revised["state"]) == ("bob", "length", 64, "TRAIL_STATE_FINISHED")
        assert revised["engine_request_ids"] == ["chatcmpl-late-1a2b3c4d"]
        assert handle.state.trails.counters["incomplete_rejoined"] == 1
        metrics = await samples(handle)  # the agent's real /metrics
        assert metrics[("vllm_audit_trails_incomplete_rejoined_total", ())] == 1
        assert metrics[("vllm_audit_trails_incomplete_forgotten_total", ())] == 0


async def test_the_late_half_of_a_trail_forced_before_a_restart_gives_its_next_revision(
        tmp_path: Path) -> None:
    """After a restart the agent reads its record log: a half of a trail forced before
    continues it (revision 1, both halves), instead of a second, different record under the
    event_id `late/0` that consumers already have."""
    async with agent(tmp_path, linger_seconds=0.2) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        await hook.send(1, engine("late", pb.LIFECYCLE_PHASE_ADDED, num_prompt_tokens=3,
                                  max_tokens=64),
                        engine("late", pb.LIFECYCLE_PHASE_FINISHED, finish_reason="length",
                               num_prompt_tokens=3, num_output_tokens=5))
        await until(lambda: len(records(published)) == 1, "the forced record")
        assert records(published)[0]["event_id"] == "late/0"
    async with agent(tmp_path, linger_seconds=0.2) as (handle, published), \
            Hook(handle.state.config.ingest_socket, source="src-2") as hook:
        await hook.send(1, http("late", user="bob"))
        await until(lambda: any(r["trail_id"] == "late" and r["revision"] == 1
                                for r in records(published)), "the revision")
        await asyncio.sleep(0.5)  # past the linger: nothing else is recorded for it
        revised = [r for r in records(published) if r["trail_id"] == "late"]
        assert [r["event_id"] for r in revised] == ["late/1"]
        (revised_record,) = revised
        assert (revised_record["finalised_by"], revised_record["incomplete"]) == (
            "FINALISED_BY_COMPLETE", [])
        assert (revised_record["user"], revised_record["finish_reason"],
                revised_record["max_tokens"], revised_record["engine_request_ids"]) == (
            "bob", "length", 64, ["chatcmpl-late-1a2b3c4d"])


async def test_a_missing_engine_half_is_incomplete_not_finished(tmp_path: Path) -> None:
    async with agent(tmp_path, linger_seconds=0.2) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        await hook.send(1, engine("lost", pb.LIFECYCLE_PHASE_ADDED),
                        http("lost", status=200))
        await until(lambda: len(records(published)) == 1, "the forced record")
        (record,) = records(published)
        assert record["state"] == "TRAIL_STATE_INCOMPLETE"
        assert record["incomplete"] == ["TRAIL_HALF_ENGINE"]
        stats = await query(handle).GetStats(q.StatsRequest())
        assert stats.trails_finished == 1


async def test_shutdown_records_nothing_made_up_and_the_restart_finishes_it(
        tmp_path: Path) -> None:
    async with agent(tmp_path, durable_publisher=True) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        for i in range(20):  # in flight at the stop
            await hook.send(i + 1, engine(f"f{i}", pb.LIFECYCLE_PHASE_ADDED))
    assert not records(published)
    async with agent(tmp_path, durable_publisher=True) as (handle, published), \
            Hook(handle.state.config.ingest_socket, source="src-2") as hook:
        assert handle.state.trails.open_trails() == 20  # replayed from the WAL
        for i in range(20):
            await hook.send(i + 1, engine(f"f{i}", pb.LIFECYCLE_PHASE_FINISHED,
                                          finish_reason="stop"), http(f"f{i}"))
        await until(lambda: len(records(published)) == 20, "20 records")
        got = records(published)
        assert len(got) == 20
        assert {r["finalised_by"] for r in got} == {"FINALISED_BY_COMPLETE"}
        assert {r["revision"] for r in got} == {0}


async def test_an_evicted_active_trail_says_so_and_its_rest_is_a_revision(
        tmp_path: Path) -> None:
    async with agent(tmp_path, max_trails=2) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        for seq, trail in enumerate(("e0", "e1", "e2"), 1):
            await hook.send(seq, engine(trail, pb.LIFECYCLE_PHASE_ADDED))
        await until(lambda: len(records(published)) == 1, "the evicted trail's record")
        (evicted,) = records(published)
        assert (evicted["trail_id"], evicted["finalised_by"], evicted["state"]) == (
            "e0", "FINALISED_BY_EVICTION", "TRAIL_STATE_INCOMPLETE")
        assert evicted["incomplete"] == ["TRAIL_HALF_HTTP", "TRAIL_HALF_ENGINE"]
        await hook.send(4, engine("e0", pb.LIFECYCLE_PHASE_FINISHED, finish_reason="stop"),
                        http("e0"))
        await until(lambda: len([r for r in records(published) if r["trail_id"] == "e0"]) == 2,
                    "the revision")
        rest = [r for r in records(published) if r["trail_id"] == "e0"][1]
        assert rest["revision"] == 1 and rest["event_id"] == "e0/1"


async def test_a_record_carries_the_engine_snapshot_nearest_its_finish(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        stats = pb.Event(time_unix_nano=T0, engine_stats=pb.EngineStats(
            num_running_reqs=7, num_waiting_reqs=2, kv_cache_usage=0.5))
        await hook.send(1, stats, model="m")
        await hook.send(2, http("loaded"), engine("loaded", pb.LIFECYCLE_PHASE_FINISHED,
                                                    finish_reason="stop"), model="m")
        await until(lambda: len(records(published)) == 1, "the record")
        snapshot = records(published)[0]["engine_at_finish"]
        assert (snapshot["num_running_reqs"], snapshot["num_waiting_reqs"],
                snapshot["kv_cache_usage"]) == (7, 2, 0.5)


# -- the store itself (no agent: what the agent's sweeper and record log rely on) ------------
def _store(**kw: Any) -> tuple[TrailStore, list[dict[str, Any]]]:
    """A store and the fields of each record it wrote (a snapshot: a revision goes on in the
    same Trail object)."""
    final: list[dict[str, Any]] = []
    return TrailStore(kw.pop("max_trails", 100), 100, 1.0,
                      lambda t: final.append(t.fields()), **kw), final


def _half(store: TrailStore, segment: int, *events: pb.Event) -> None:
    store.apply(pb.Batch(source_id="s", seq=segment, events=events), segment=segment)


def test_the_linger_sweep_writes_at_most_its_limit_and_says_more_are_due() -> None:
    store, final = _store()
    for i in range(5):
        _half(store, 1, engine(f"t{i}", pb.LIFECYCLE_PHASE_FINISHED))
    later = time.monotonic() + 10
    slices = []
    while True:
        more = store.sweep(now=later, limit=2)
        slices.append(len(final))
        if not more:
            break
    assert slices == [2, 4, 5]
    assert [r["request_id"] for r in final] == [f"t{i}" for i in range(5)]
    assert {r["finalised_by"] for r in final} == {"FINALISED_BY_LINGER"}


def test_a_record_releases_its_own_segments_not_those_of_the_revision_after_it() -> None:
    """The record of a forced trail is durable only later; a late half stored meanwhile (in
    segment 2) is in no record yet, so its WAL segment must stay held."""
    store, final = _store()
    _half(store, 1, engine("a", pb.LIFECYCLE_PHASE_FINISHED))
    store.sweep(now=time.monotonic() + 10)
    trail = store.get("a")
    assert trail is not None and len(final) == 1
    written = store.take_segments(trail)  # as the agent does when it makes the record
    _half(store, 2, http("a"))  # complete now: its revision is written too
    assert [r["revision"] for r in final] == [0, 1]
    revision = store.take_segments(trail)
    store.release(written)  # the forced record became durable
    assert dict(store.segment_refs) == {2: 1}
    store.release(revision)
    assert not store.segment_refs


def test_remembered_forced_trails_are_bounded_and_the_forgotten_counted() -> None:
    """Forced trails that left memory are kept within half the store's byte cap; past it the
    oldest go (counted), and a late half of a forgotten one makes a revision of its own."""
    store, final = _store(max_trails=1, max_bytes=10_000)
    for i in range(40):
        _half(store, 1, engine(f"f{i}", pb.LIFECYCLE_PHASE_FINISHED))
        store.sweep(now=time.monotonic() + 10)  # forced, then evicted by the next one
    assert 0 < store.incomplete_bytes <= 5_000
    assert store.counters["incomplete_forgotten"] > 0
    _half(store, 2, http("f38"))  # remembered: a whole revision
    _half(store, 3, http("f0"))  # forgotten: the HTTP half alone, forced again later
    store.sweep(now=time.monotonic() + 10)
    by_id = {(r["request_id"], r["revision"]): r for r in final}
    assert (by_id[("f38", 1)]["incomplete"], by_id[("f38", 1)]["engine_request_ids"]) == (
        [], ["chatcmpl-f38-1a2b3c4d"])
    assert (by_id[("f0", 1)]["incomplete"], by_id[("f0", 1)]["engine_request_ids"]) == (
        ["TRAIL_HALF_ENGINE"], [])
    assert store.counters["incomplete_rejoined"] == 1


def test_at_start_a_rebuilt_half_of_a_trail_recorded_whole_goes_and_a_forced_one_continues(
        ) -> None:
    """What the WAL replay rebuilt, told what the record log holds (`remember_recorded`): the
    engine half of "whole" (recorded complete at revision 0; its HTTP half's segment is gone)
    must not become a second record "whole/0"; the engine half of "forced" (recorded without
    its HTTP half) is that record, so the HTTP half makes revision 1 with both."""
    store, final = _store()
    _half(store, 1, engine("whole", pb.LIFECYCLE_PHASE_FINISHED),
          engine("forced", pb.LIFECYCLE_PHASE_FINISHED, finish_reason="stop"))
    forced_record = record_from_fields({**store.get("forced").fields(),  # type: ignore[union-attr]
                                        "state": "TRAIL_STATE_FINISHED",
                                        "finalised_by": "FINALISED_BY_LINGER",
                                        "incomplete": ["TRAIL_HALF_HTTP"]})
    store.remember_recorded([("whole", 0, None), ("forced", 0, forced_record)])
    assert store.get("whole") is None
    assert dict(store.segment_refs) == {}  # both are in the log: segment 1 may go
    store.sweep(now=time.monotonic() + 10)
    assert final == []  # nothing forced again
    _half(store, 2, http("forced"))
    (revised,) = final
    assert (revised["request_id"], revised["revision"], revised["finalised_by"],
            revised["finish_reason"], revised["user"]) == (
        "forced", 1, "FINALISED_BY_COMPLETE", "stop", "alice")
    assert (store.counters["rebuilt_recorded_fragment_dropped"],
            store.counters["rebuilt_recorded_continued"]) == (1, 1)
