"""A record carries its trail's grammar and steps at levels full and up (records.grammar_proof),
so `vllm-audit replay` can work from a Kafka record or an export alone; over the cap it
carries none and says how many it left out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.agent_harness import Hook, agent, lifecycle, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.model.record import grammar_proof
from vllm_audit_agent.records.replay import ReplayError, load_any_file, trail_from_records

T0 = 1_700_000_000 * 10**9


def grammar_trail(rid: str, steps: int) -> list[pb.Event]:
    events = [pb.Event(time_unix_nano=T0, request_id=rid, grammar_compiled=pb.GrammarCompiled(
        backend="xgrammar", spec_type="json", spec='{"type": "object"}', spec_size=18))]
    events += [pb.Event(time_unix_nano=T0 + i, request_id=rid, so_step=pb.StructuredOutputStep(
        step=i, accepted_tokens=[100 + i], allowed_tokens=7, allowed_per_token=[7],
        accepted=True, vocab_size=1024)) for i in range(1, steps + 1)]
    events.append(lifecycle(rid, pb.LIFECYCLE_PHASE_FINISHED, T0 + 10**9,
                            finish_reason="stop", num_output_tokens=steps))
    return events


async def record_of(tmp_path: Path, level: int, steps: int, **overrides: object
                    ) -> dict[str, Any]:
    async with agent(tmp_path, audit_level=level, **overrides) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        await hook.send(1, *grammar_trail("req-proof-0001", steps))
        await until(lambda: any(t == "requests" for t, _, _ in published.records), "a record")
    (record,) = [r for topic, _, r in published.records if topic == "requests"]
    return record


async def test_a_full_level_record_carries_the_grammar_and_every_step(tmp_path: Path) -> None:
    record = await record_of(tmp_path, pb.AUDIT_LEVEL_FULL, steps=5)
    assert record["grammar_events_omitted"] == 0
    trail = trail_from_records([orjson.loads(orjson.dumps(record))], None, "test")
    steps = [e.so_step for e in trail.events if e.WhichOneof("body") == "so_step"]
    assert [s.step for s in steps] == [1, 2, 3, 4, 5]
    assert [list(s.accepted_tokens) for s in steps] == [[101], [102], [103], [104], [105]]
    (compiled,) = [e.grammar_compiled for e in trail.events
                   if e.WhichOneof("body") == "grammar_compiled"]
    assert compiled.spec == '{"type": "object"}'


async def test_a_summary_record_carries_none_and_replay_says_why(tmp_path: Path) -> None:
    record = await record_of(tmp_path, pb.AUDIT_LEVEL_SUMMARY, steps=3)
    assert record["grammar_events"] == [] and record["grammar_events_omitted"] == 0
    with pytest.raises(ReplayError, match="below level full"):
        trail_from_records([record], None, "test")


async def test_over_the_cap_the_record_says_how_many_it_left_out(tmp_path: Path) -> None:
    record = await record_of(tmp_path, pb.AUDIT_LEVEL_FULL, steps=50,
                             record_grammar_max_bytes=2000)
    assert record["grammar_events"] == [] and record["grammar_events_omitted"] == 51
    with pytest.raises(ReplayError, match="51 grammar events were over"):
        trail_from_records([record], None, "test")


def test_the_cap_is_exact_and_zero_means_never() -> None:
    raw = [e.SerializeToString() for e in grammar_trail("r", 20)]
    proof, omitted = grammar_proof(raw)
    assert len(proof) == 21 and omitted == 0
    size = len(orjson.dumps(proof))
    assert grammar_proof(raw, size) == (proof, 0)
    assert grammar_proof(raw, size - 1) == ([], 21)
    assert grammar_proof(raw, 0) == ([], 0)


def test_an_export_file_names_its_trails(tmp_path: Path) -> None:
    raw = [e.SerializeToString() for e in grammar_trail("r", 2)]
    proof, _ = grammar_proof(raw)
    lines = [{"type": "request", "trail_id": t, "revision": rev, "grammar_events": proof,
              "grammar_events_omitted": 0} for t, rev in (("a", 0), ("b", 0), ("a", 1))]
    lines.insert(1, {"type": "checkpoint", "seq": 9})
    export = tmp_path / "export.jsonl"
    export.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    with pytest.raises(ReplayError, match="2 trails: name one with --trail-id"):
        load_any_file(export)
    assert load_any_file(export, "a").summary.request_id == "a"
    with pytest.raises(ReplayError, match="no record of trail 'c'"):
        load_any_file(export, "c")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"trail_id": "a"}\nnot json\n')
    with pytest.raises(ReplayError, match="line 2 is not JSON"):
        load_any_file(broken)


async def test_the_cli_shows_the_proof_as_the_record_and_its_trail_file_replays(
        tmp_path: Path) -> None:
    """`query list` (a summary: no events) leaves the proof fields out instead of showing an
    empty proof; `query get ID --events` fills them as the record does; and the file it
    writes loads for replay: its steps' unset allowed sets (printed `{}`) stay unset."""
    from tests.test_cli import acli, local_admin
    from vllm_audit_agent.records.replay import _recorded

    async with agent(tmp_path, audit_level=pb.AUDIT_LEVEL_FULL) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        await hook.send(1, *grammar_trail("req-proof-0001", 4))
        await until(lambda: any(t == "requests" for t, _, _ in published.records), "a record")
        (record,) = [r for topic, _, r in published.records if topic == "requests"]
        address, creds = handle.query_address, local_admin(handle)
        listed = await acli("query", "list", "--address", address, env=creds)
        (summary,) = orjson.loads(listed.stdout)["trails"]
        assert "grammar_events" not in summary and "grammar_events_omitted" not in summary
        got = await acli("query", "get", "req-proof-0001", "--events", "--address", address,
                         env=creds)
        assert got.returncode == 0, got.stderr
    trail_file = tmp_path / "trail.json"
    trail_file.write_text(got.stdout)
    shown = orjson.loads(got.stdout)
    assert shown["summary"]["grammar_events"] == record["grammar_events"]
    assert len(record["grammar_events"]) == 5 and shown["summary"]["grammar_events_omitted"] == 0
    assert all(e["so_step"]["allowed_set"] == {} for e in shown["events"] if "so_step" in e)
    recorded = _recorded(load_any_file(trail_file))
    assert [s.step for s in recorded.steps] == [1, 2, 3, 4]
    assert not any(s.HasField("allowed_set") for s in recorded.steps)
    assert recorded.spec == '{"type": "object"}'
