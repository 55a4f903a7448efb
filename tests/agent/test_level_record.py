"""The audit level in effect is on record: every change through the control API, and a change
made while the agent was down (the configuration, or the level file edited by hand) as a record
naming the old and the new level when the agent finds it at its next start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from tests.support.agent_harness import agent, control
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2
from vllm_audit_agent.control.level_file import LEVEL_FILE
from vllm_audit_agent.records.read_only import read_records


def level_records(tmp: Path) -> list[dict[str, Any]]:
    return [r for r in map(orjson.loads, read_records(tmp / "data" / "records"))
            if r["type"] == "level"]


async def test_every_level_change_is_a_record_and_one_outside_the_api_says_so(tmp_path: Path
                                                                                ) -> None:
    async with agent(tmp_path, audit_level=pb.AUDIT_LEVEL_SUMMARY):
        pass
    async with agent(tmp_path, audit_level=pb.AUDIT_LEVEL_SUMMARY) as (handle, _):
        # The same level at a restart: nothing new.
        await control(handle).SetAuditLevel(query_pb2.SetAuditLevelRequest(
            level=pb.AUDIT_LEVEL_FULL))
    async with agent(tmp_path, audit_level=pb.AUDIT_LEVEL_KEY_EVENTS):
        pass  # the configuration changed while the agent was down
    level_file = tmp_path / "data" / LEVEL_FILE
    persisted = json.loads(level_file.read_text())
    persisted["level"] = pb.AUDIT_LEVEL_OFF  # edited by hand: the file still matches the config
    persisted["configured_level"] = pb.AUDIT_LEVEL_KEY_EVENTS
    level_file.write_text(json.dumps(persisted))
    async with agent(tmp_path, audit_level=pb.AUDIT_LEVEL_KEY_EVENTS):
        pass
    got = [(r["previous_level"], r["level"], r["how"]) for r in level_records(tmp_path)]
    assert got == [
        (None, "AUDIT_LEVEL_SUMMARY", "at start, from the configuration"),
        ("AUDIT_LEVEL_SUMMARY", "AUDIT_LEVEL_FULL", "control API"),
        ("AUDIT_LEVEL_FULL", "AUDIT_LEVEL_KEY_EVENTS",
         "changed outside the API: at start, from the configuration"),
        ("AUDIT_LEVEL_KEY_EVENTS", "AUDIT_LEVEL_OFF",
         "changed outside the API: at start, from the level file"),
    ]
