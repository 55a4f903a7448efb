"""How far back a start reads the record log for the ingest WAL's replay (ingest/replay_bound.py),
from a real ingest WAL: the oldest event time of its first readable batch, less the slack; now
when it replays nothing; no bound (the start's count instead) when it cannot be trusted."""

from __future__ import annotations

from pathlib import Path

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.ingest.replay_bound import REPLAY_BOUND_SLACK_MS, recall_since_ms
from vllm_audit_agent.storage.wal import WriteAheadLog

NOW_MS = 1_800_000_000_000


def batch(seq: int, *stamps_ms: int) -> bytes:
    events = [pb.Event(time_unix_nano=ms * 1_000_000) for ms in stamps_ms]
    return pb.Batch(source_id="host:1:1", seq=seq, epoch=7, events=events).SerializeToString()


def wal_of(path: Path, *payloads: bytes) -> WriteAheadLog:
    wal = WriteAheadLog(path, 1 << 30, "never")
    for payload in payloads:
        wal.append(payload)
    return wal


def test_the_bound_is_the_first_batchs_oldest_event_less_the_slack(tmp_path: Path) -> None:
    # Later batches may carry older events (a hook that buffered): the first one's bound
    # still holds for them, as they arrived after it.
    wal = wal_of(tmp_path, batch(1, NOW_MS - 5_000, NOW_MS - 9_000), batch(2, NOW_MS - 60_000))
    assert recall_since_ms(wal, NOW_MS) == NOW_MS - 9_000 - REPLAY_BOUND_SLACK_MS


def test_an_empty_wal_needs_nothing_read_back(tmp_path: Path) -> None:
    assert recall_since_ms(wal_of(tmp_path), NOW_MS) == NOW_MS


def test_unreadable_and_eventless_batches_are_passed_over(tmp_path: Path) -> None:
    wal = wal_of(tmp_path, b"\xff not a batch", batch(1), batch(2, NOW_MS - 1_000))
    assert recall_since_ms(wal, NOW_MS) == NOW_MS - 1_000 - REPLAY_BOUND_SLACK_MS


def test_a_bound_in_the_future_or_none_found_is_not_trusted(tmp_path: Path) -> None:
    future = wal_of(tmp_path / "future", batch(1, NOW_MS + 10 * REPLAY_BOUND_SLACK_MS))
    assert recall_since_ms(future, NOW_MS) is None
    gaps_only = wal_of(tmp_path / "gaps", *(batch(i) for i in range(1, 100)))
    assert recall_since_ms(gaps_only, NOW_MS) is None
