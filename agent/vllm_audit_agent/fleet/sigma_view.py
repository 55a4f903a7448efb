"""The fleet store's `events` view: every record with a column per field the Sigma rules
(detections/sigma/) name, under the record's own field names, so a rule converted by
pySigma's ClickHouse backend (`table_name="vllm_audit.events"`) runs on the store as it is.

The store keeps the columns an audit query filters on and the canonical record; the rules
also read fields only the record holds (the client address, the auth decision, the content
signals, a finding's rule and subject): those are JSON extractions from `record`. Dotted names
(`content_signals.prompt.sql_injection`, `gen_ai.usage.output_tokens`) are column names here,
which the backend quotes. One row per (log_id, seq) (`LIMIT 1 BY`): a record the consumer
stored twice counts once in a correlation's count. A request record past the store's content
retention has lost `record`, and with it the extracted fields (its summary columns stay).
"""

from __future__ import annotations

from vllm_audit_agent.siem.signals import CONTENT_FLAGS, SIDES

VIEW = "events"


def _string(*path: str) -> str:
    return "JSONExtractString(record, " + ", ".join(f"'{p}'" for p in path) + ")"


def _number(*path: str) -> str:
    return "JSONExtractFloat(record, " + ", ".join(f"'{p}'" for p in path) + ")"


#: Sigma field (a record field name) -> its ClickHouse expression over `records`.
COLUMNS: dict[str, str] = {
    "timestamp": "ts", "type": "type", "log_id": "log_id", "seq": "seq",
    "trail_id": "trail_id", "revision": "revision", "tenant": "tenant", "user": "user",
    "model": "model", "gen_ai.request.model": "model", "state": "state",
    "client_request_id": "client_request_id", "status_code": "status_code",
    "gen_ai.usage.input_tokens": "input_tokens", "gen_ai.usage.output_tokens": "output_tokens",
    "client_ip": _string("client_ip"), "auth_decision": _string("auth_decision"),
    "api_key_sha256": _string("api_key_sha256"), "http_path": _string("http_path"),
    "user_agent": _string("user_agent"), "finish_reason": _string("finish_reason"),
    "claimed_user": _string("claimed_user"), "latency_ms": _number("latency_ms"),
    "error": _string("error"),
    "content_signals.ruleset": _string("content_signals", "ruleset"),
    **{f"content_signals.{side}.{flag}": f"toUInt32({_number('content_signals', side, flag)})"
       for side in SIDES for flag in CONTENT_FLAGS},
    # Finding records (the rule engine's): what fired, on whom, how far over its threshold.
    "rule": _string("rule"), "ruleset": _string("ruleset"), "severity": _string("severity"),
    "subject.kind": _string("subject", "kind"), "subject.value": _string("subject", "value"),
    "observed": _number("observed"), "threshold": _number("threshold"),
    "scope": _string("scope"), "summary": _string("summary"),
}


def view_statement(database: str) -> str:
    columns = ",\n       ".join(f"{expr} AS `{name}`" for name, expr in COLUMNS.items())
    return (f"CREATE OR REPLACE VIEW {database}.{VIEW} AS\n"
            f"SELECT {columns}\nFROM {database}.records\nLIMIT 1 BY log_id, seq")
