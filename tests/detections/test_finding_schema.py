"""The finding record's JSON Schema (schema/finding-record.schema.json): the committed file is
what detections/schema.py makes, real findings of a real agent (chained) and of the fleet's
engine validate against it, and it rejects drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.detections.test_findings_api import crawl, listed
from tests.support.agent_harness import agent, query
from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.detections.engine import RuleEngine
from vllm_audit_agent.detections.finding import Hit, finding_record
from vllm_audit_agent.detections.schema import CHAIN_FIELDS, finding_record_schema
from vllm_audit_agent.detections.settings import DetectionSettings

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "schema" / "finding-record.schema.json"


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_committed_schema_is_the_one_the_code_gives() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == finding_record_schema(), \
        "schema/finding-record.schema.json is stale: python -m vllm_audit_agent.detections.schema > it"
    # Every field finding.py writes is in it (a new one fails here until the schema has it).
    hit = Hit("high_call_rate", "user", "u", "t", 1, 2, 51, 50, ("a",), 51, "s")
    made = set(finding_record(hit, "medium", "pod")) | {"type", "recorded_unix_ms"}
    assert made | set(CHAIN_FIELDS) == set(finding_record_schema()["properties"])


async def test_real_findings_validate_and_drift_is_rejected(tmp_path: Path) -> None:
    check = validator()
    async with agent(tmp_path, detections=True) as (handle, publisher):
        published = await crawl(handle, publisher)
        chained = listed(await query(handle).ListFindings(q.ListFindingsRequest()))
    assert len(chained) == 4
    for finding in [*published, *chained]:
        errors = [e.message for e in check.iter_errors(finding)]
        assert errors == [], (finding, errors)
    # The fleet's own (scope fleet, in no chain): its type and time, no chain fields.
    engine = RuleEngine(DetectionSettings(), "fleet", dedupe=True)
    fleet: list[dict[str, Any]] = []
    for i in range(60):
        fleet += engine.feed({"type": "request", "trail_id": f"t{i}", "revision": 0,
                              "created_unix_ms": 1_790_000_000_000 + i * 100, "user": "eve",
                              "model": "tiny", "status_code": 200})
    (found,) = fleet
    found.update(type="finding", recorded_unix_ms=1_790_000_010_000)
    assert [e.message for e in check.iter_errors(found)] == []
    pod = chained[0]
    for drifted, why in (({**pod, "extra": 1}, "Additional properties"),
                         ({**pod, "rule": "made_up"}, "is not one of"),
                         ({**pod, "severity": "urgent"}, "is not one of"),
                         ({**pod, "subject": {"kind": "user"}}, "'value' is a required"),
                         ({k: v for k, v in pod.items() if k != "hash"}, "'hash' is a required"),
                         ({k: v for k, v in found.items() if k != "window_end_ms"},
                          "'window_end_ms' is a required")):
        with pytest.raises(jsonschema.ValidationError, match=why):
            jsonschema.validate(drifted, json.loads(SCHEMA_FILE.read_text()),
                                cls=jsonschema.Draft202012Validator)
