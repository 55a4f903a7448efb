"""Streaming detections: one rule engine (`engine`) fed request and access records, in the agent
(per pod, `runner`: after the record log's append, findings chained back into it) and in the
fleet service (fleet-wide, over the consumed records). A record becomes an `event` (the
fields the rules read); the rules (`rate_rules`: calls, auth failures, addresses per key,
refusals, flagged content in sliding windows; `baseline_rules`: output length and token spend
against a robust baseline) keep bounded per-key state (`state`); thresholds come from one
settings table (`settings`, a YAML/JSON/TOML file); a finding is a record (`finding`).

Owns: the detection state and the finding record's shape. Imports: `records`.
"""
