"""Queries that scale: the trail index agrees with a full scan under every filter while trails
arrive, change and are evicted; cursors survive that; WatchTrails streams what becomes final;
a trail larger than one gRPC message is read in pages."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from tests.support.agent_harness import Hook, agent, lifecycle, query
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.trails.index import LAZY_LIST, Filter, TrailIndex
from vllm_audit_agent.trails.store import TrailStore

MODELS, USERS, TENANTS = ("m1", "m2"), ("u1", "u2", "u3"), ("t1", "t2", "")


def http(rid: str, t: int, rng: random.Random, status: int) -> pb.Event:
    return pb.Event(time_unix_nano=t, request_id=rid, http=pb.HttpRequest(
        model=rng.choice(MODELS), user=rng.choice(USERS), tenant=rng.choice(TENANTS),
        status_code=status))


def scan(store: TrailStore, f: Filter) -> list[str]:
    """The reference: every stored trail, filtered (in the store's order)."""
    return [t.summary.request_id for t in store.trails() if f.matches(t.summary)]


def all_pages(index: TrailIndex, f: Filter, size: int) -> list[str]:
    ids: list[str] = []
    after = 0
    while True:
        page, after = index.page(f, after, size)
        ids += [s.request_id for s in page]
        if not after:
            return ids


@pytest.mark.parametrize("lazy_list", [LAZY_LIST, 4])
def test_index_pages_equal_a_full_scan_under_churn(lazy_list: int) -> None:
    """`lazy_list` 4: evicted trails stay in every long per-value list until it compacts."""
    rng = random.Random(7)
    store = TrailStore(max_trails=300, max_events=100, linger_seconds=1e9, on_final=lambda t: None)
    index = TrailIndex(store, lazy_list=lazy_list)
    filters = [Filter(), Filter(model="m1"), Filter(user="u2", tenant="t1"),
               Filter(state=q.TRAIL_STATE_FAILED), Filter(state=q.TRAIL_STATE_ACTIVE),
               Filter(tenant="t2", model="m2", user="u3"), Filter(user="nobody")]
    order: list[str] = []
    for step in range(1000):
        seq = step + 1
        rid = f"r{rng.randrange(500)}"  # ids come back after eviction: new trails, same id
        # A 4xx HTTP half makes a trail final (state failed); a 200 one waits for its engine.
        status = rng.choice((200, 403))
        batch = pb.Batch(source_id="s", seq=seq, events=[http(rid, 10**15 + step, rng, status)])
        store.apply(batch, 1)
        if step % 97 == 0:
            store.sweep(now=float("inf"))  # lingering trails become final
        order = [t.summary.request_id for t in store.trails()]
        if step % 50 == 0:
            for f in filters:
                # Pages list the newest first.
                assert all_pages(index, f, 7) == sorted(
                    scan(store, f), key=lambda r: store.get(r).index_seq,  # type: ignore[union-attr]
                    reverse=True)
    assert len(index) == len(store) == len(order) <= 300
    assert index.active_count() == store.active_count()


async def test_cursor_survives_arrivals_and_evictions(tmp_path: Path) -> None:
    async with agent(tmp_path, max_trails=10) as (handle, _), \
            Hook(handle.state.config.ingest_socket) as hook:
        for i in range(10):
            await hook.send(i + 1, lifecycle(f"{i}-0000000{i}", pb.LIFECYCLE_PHASE_FINISHED,
                                             10**15 + i))
        stub = query(handle)
        first = await stub.ListTrails(q.ListTrailsRequest(page_size=4))
        # Newest first: what happened lately is the first page.
        assert [t.request_id for t in first.trails] == [f"{i}-{i:08d}" for i in (9, 8, 7, 6)]
        # Five new trails evict the five oldest, including ones not listed yet; the new ones
        # are newer than the first page, so the next pages do not show them.
        for i in range(10, 15):
            await hook.send(i + 1, lifecycle(f"{i}-{i:08d}", pb.LIFECYCLE_PHASE_FINISHED,
                                             10**15 + i))
        rest: list[str] = []
        token = first.next_page_token
        while token:
            page = await stub.ListTrails(q.ListTrailsRequest(page_size=4, page_token=token))
            rest += [t.request_id for t in page.trails]
            token = page.next_page_token
        # Nothing repeated, nothing still stored and older than the first page skipped.
        assert rest == ["5-00000005"]
        fresh = await stub.ListTrails(q.ListTrailsRequest(page_size=4))
        assert [t.request_id for t in fresh.trails] == [f"{i}-{i:08d}" for i in (14, 13, 12, 11)]


async def test_watch_streams_trails_as_they_become_final(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _), Hook(handle.state.config.ingest_socket) as hook:
        await hook.send(1, lifecycle("0-00000000", pb.LIFECYCLE_PHASE_FINISHED, 10**15),
                        model="a")
        await hook.send(2, lifecycle("1-00000001", pb.LIFECYCLE_PHASE_ADDED, 10**15), model="a")
        stub = query(handle)
        watch = stub.WatchTrails(q.WatchTrailsRequest(replay=True, model="a"))
        first = await asyncio.wait_for(watch.read(), 5)
        assert first.trail.request_id == "0-00000000"  # replayed; 1 is not final yet
        await hook.send(3, lifecycle("2-00000002", pb.LIFECYCLE_PHASE_FINISHED, 10**15),
                        model="b")  # another model: filtered out
        await hook.send(4, lifecycle("1-00000001", pb.LIFECYCLE_PHASE_FINISHED, 10**15 + 5))
        second = await asyncio.wait_for(watch.read(), 5)
        assert second.trail.request_id == "1-00000001"
        assert second.trail.state == q.TRAIL_STATE_FINISHED
        watch.cancel()
        await asyncio.sleep(0.1)
        assert not handle.index or not handle.index.watches  # the watch was unregistered


async def test_a_trail_larger_than_a_message_is_read_in_pages(tmp_path: Path) -> None:
    steps = 300
    mask = bytes(range(256)) * 64  # 16 KiB of allowed-token bitmask per step: ~4.9 MB in all
    async with agent(tmp_path, max_trail_bytes=64 << 20) as (handle, _), \
            Hook(handle.state.config.ingest_socket) as hook:
        for i in range(steps):
            step = pb.Event(time_unix_nano=10**15 + i, request_id="0-abcdef01",
                            so_step=pb.StructuredOutputStep(
                                vocab_size=len(mask) * 8,
                                allowed_set=pb.AllowedTokenSet(bitmask=mask)))
            await hook.send(i + 1, step)
        stub = query(handle)
        request = q.GetTrailRequest(request_id="0-abcdef01", include_events=True)
        pages, events = 0, 0
        while True:
            page = await stub.GetTrail(request)
            pages += 1
            events += len(page.events)
            assert page.events_total == steps
            if not page.next_event_offset:
                break
            request.event_offset = page.next_event_offset
        assert events == steps and pages >= 2
        limited = await stub.GetTrail(q.GetTrailRequest(
            request_id="0-abcdef01", include_events=True, event_offset=10, event_limit=5))
        assert len(limited.events) == 5 and limited.next_event_offset == 15
        assert limited.events[0].time_unix_nano == 10**15 + 10


async def test_cli_tail_streams_and_get_reads_every_page(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import orjson

    async with agent(tmp_path) as (handle, _), Hook(handle.state.config.ingest_socket) as hook:
        await hook.send(1, lifecycle("0-00000000", pb.LIFECYCLE_PHASE_FINISHED, 10**15))
        mask = bytes(range(256)) * 64
        for i in range(300):  # ~4.9 MB of steps: more than one gRPC message
            step = pb.StructuredOutputStep(vocab_size=len(mask) * 8,
                                           allowed_set=pb.AllowedTokenSet(bitmask=mask))
            await hook.send(i + 2, pb.Event(time_unix_nano=10**15 + i, request_id="1-00000001",
                                            so_step=step))
        env = {**os.environ, "VLLM_AUDIT_DATA_DIR": str(handle.state.config.data_dir)}
        cli = [sys.executable, "-m", "vllm_audit_agent.cli"]
        tail = await asyncio.to_thread(
            subprocess.Popen, [*cli, "tail", "--address", handle.query_address, "--count", "2"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # The stored final trail comes first; the second arrives while tail is connected.
            await asyncio.sleep(0.5)
            await hook.send(400, lifecycle("1-00000001", pb.LIFECYCLE_PHASE_FINISHED, 10**15 + 999))
            out, err = await asyncio.to_thread(tail.communicate, timeout=30)
        finally:
            if tail.poll() is None:
                tail.kill()
        assert tail.returncode == 0, err
        assert [orjson.loads(line)["request_id"] for line in out.splitlines()] == [
            "0-00000000", "1-00000001"]
        got = await asyncio.to_thread(
            subprocess.run, [*cli, "query", "--address", handle.query_address, "get",
                             "1-00000001", "--events"],
            env=env, capture_output=True, text=True, timeout=60)
        assert got.returncode == 0, got.stderr
        assert len(orjson.loads(got.stdout)["events"]) == 301
