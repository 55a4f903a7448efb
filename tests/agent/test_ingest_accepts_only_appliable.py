"""Property: whatever validation accepts, the agent can apply, finalise, publish, export and
replay. Batches are built from the proto descriptors with each scalar at its extremes
(NaN, ±inf, ±1e300, int32/int64 bounds, long and non-ASCII strings)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from tests.support.agent_harness import agent_config
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.api.collectors import make_registry
from vllm_audit_agent.delivery.no_kafka import InMemoryPublisher
from vllm_audit_agent.ingest.service import replay_wal
from vllm_audit_agent.model.record import encode
from vllm_audit_agent.model.validation import validate
from vllm_audit_agent.records.chain import load_or_create_signer
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.records.read_only import read_records
from vllm_audit_agent.state import AgentState
from vllm_audit_agent.storage.wal import WriteAheadLog
from vllm_audit_agent.telemetry.gpu import GpuSampler

_T = FieldDescriptor
_EXTREMES: dict[int, list[Any]] = {
    _T.TYPE_DOUBLE: [float("nan"), float("inf"), float("-inf"), 1e300, -1e300, 0.0, 12.5],
    _T.TYPE_INT32: [-(1 << 31), (1 << 31) - 1, -1, 0, 5],
    _T.TYPE_INT64: [-(1 << 63), (1 << 63) - 1, -1, 0, 10**15],
    _T.TYPE_BOOL: [True, False],
    _T.TYPE_STRING: ["", "x", "é" * 3000, "stop", "FINISHED_ERROR", "y" * 5000],
    _T.TYPE_BYTES: [b"", b"\x00" * 16],
}
_BODIES = ("lifecycle", "grammar_compiled", "so_step", "so_summary", "engine_stats", "http")
_IDS = ["0_chatcmpl-a-1a2b3c4d", "1_chatcmpl-a-1a2b3c4d", "a", "0-0000000b", ""]


def _message(descriptor: Descriptor) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in descriptor.fields:
        if f.type == _T.TYPE_ENUM:
            values = [v.number for v in f.enum_type.values] + [99]
            fields[f.name] = st.sampled_from(values)
        elif f.type in _EXTREMES and not f.is_repeated:
            fields[f.name] = st.sampled_from(_EXTREMES[f.type])
    return st.fixed_dictionaries({}, optional=fields)


def _event() -> st.SearchStrategy[pb.Event]:
    def build(kind: str, body: dict[str, Any], time: int, rid: str) -> pb.Event:
        event = pb.Event(time_unix_nano=time, request_id=rid)
        getattr(event, kind).SetInParent()
        for name, value in body.items():
            setattr(getattr(event, kind), name, value)
        return event

    return st.sampled_from(_BODIES).flatmap(lambda kind: st.builds(
        build, st.just(kind), _message(getattr(pb, type(getattr(pb.Event(), kind)).__name__)
                                       .DESCRIPTOR),
        st.sampled_from(_EXTREMES[_T.TYPE_INT64]), st.sampled_from(_IDS)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(_event(), min_size=1, max_size=6), min_size=1, max_size=4))
def test_accepted_batches_apply_finalise_export_and_replay(tmp_path_factory: Any,
                                                           batches: list[list[pb.Event]]) -> None:
    tmp: Path = tmp_path_factory.mktemp("prop")

    def fresh() -> AgentState:
        config = agent_config(tmp)
        wal = WriteAheadLog(config.data_dir, config.wal_max_bytes, "never")
        records = RecordLog(config.data_dir / "records", 1 << 30, "never",
                            load_or_create_signer(None, config.data_dir))
        return AgentState(config, wal, InMemoryPublisher(), GpuSampler(None, 5.0), records)

    async def run() -> None:
        state = fresh()
        for seq, events in enumerate(batches, start=1):
            batch = pb.Batch(source_id="prop", seq=seq, events=events, model="m")
            verdict = validate(batch, 1 << 24)
            assert not verdict.refusal, verdict.detail
            segment = state.wal.append(batch.SerializeToString())
            state.ingest.mark_stored(batch)
            state.ingest.apply_batch(batch, segment)
        state.trails.sweep(now=time.monotonic() + 1e9)  # every half-complete trail lingered out
        await state.records.write_pending()  # every final trail became a record on disk
        for payload in read_records(tmp / "data" / "records"):
            encode(orjson.loads(payload))
        generate_latest(make_registry(state))
        state.wal.close()
        state.records.close()
        again = fresh()
        assert replay_wal(again.ingest, again.config.data_dir / "quarantine") == len(batches)
        assert again.agent_dropped["replay_quarantined_batches"] == 0
        again.wal.close()
        again.records.close()

    asyncio.run(run())
