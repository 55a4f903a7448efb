"""The JSON Schema of the finding record (topic `<prefix>.findings`, ListFindings), derived from
finding.py's rules, severities, subject kinds and scopes, plus the chain fields the record log
adds to a pod's finding (a fleet's is in no chain: it has its type and time only).

`python -m vllm_audit_agent.detections.schema > schema/finding-record.schema.json` writes it;
a test proves the committed file is what this produces and validates real findings against
it (the sibling of records/schema.py, which writes the trail record's).
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from vllm_audit_agent.detections.finding import (
    EVIDENCE_MAX,
    FINDING_SCHEMA_VERSION,
    RULES,
    RULESET,
    SCOPES,
    SEVERITIES,
    SUBJECT_KINDS,
)
from vllm_audit_agent.records.chain import RECORD_TYPE_FINDING

_HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_MS = {"type": "integer", "minimum": 0}
#: What the record log adds to a pod's finding: its place in the hash chain and the log.
CHAIN_FIELDS: dict[str, Any] = {
    "seq": {"type": "integer", "minimum": 1},
    "prev_hash": _HASH,
    "hash": _HASH,
    "log_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}


def finding_record_schema() -> dict[str, Any]:
    properties: dict[str, Any] = {
        "type": {"const": RECORD_TYPE_FINDING},
        "schema": {"const": FINDING_SCHEMA_VERSION},
        "finding_id": {"type": "string", "minLength": 1},
        "rule": {"enum": list(RULES)},
        # The rule set's version: changed thresholds' meaning is a new name, a new schema.
        "ruleset": {"const": RULESET},
        "severity": {"enum": list(SEVERITIES)},
        "subject": {"type": "object", "additionalProperties": False,
                    "properties": {"kind": {"enum": list(SUBJECT_KINDS)},
                                   "value": {"type": "string"}},
                    "required": ["kind", "value"]},
        "tenant": {"type": "string"},
        "window_start_ms": _MS,
        "window_end_ms": _MS,
        "observed": {"type": "number"},
        "threshold": {"type": "number"},
        "evidence_trail_ids": {"type": "array", "items": {"type": "string"},
                               "maxItems": EVIDENCE_MAX},
        "evidence_count": {"type": "integer", "minimum": 0},
        "summary": {"type": "string"},
        "scope": {"enum": list(SCOPES)},
        "recorded_unix_ms": _MS,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://vllm-audit.dev/schema/finding-record.v{FINDING_SCHEMA_VERSION}.json",
        "title": "vllm-audit finding record (topic <prefix>.findings)",
        "type": "object",
        "properties": {**properties, **CHAIN_FIELDS},
        "required": list(properties),
        # A pod's finding is a record of its log's chain: it carries the chain fields.
        "if": {"properties": {"scope": {"const": "pod"}}},
        "then": {"required": list(CHAIN_FIELDS)},
        # Consumers may rely on the field set: a new field is a new schema version.
        "additionalProperties": False,
    }


def main() -> None:
    sys.stdout.write(orjson.dumps(finding_record_schema(), option=orjson.OPT_INDENT_2).decode()
                     + "\n")


if __name__ == "__main__":
    main()
