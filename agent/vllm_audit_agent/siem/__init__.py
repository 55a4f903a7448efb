"""Records in the formats a SIEM takes as is: OCSF (API Activity 6003 for a request, Detection
Finding 2004 for a finding), ECS (Elastic), Splunk HEC events, and the field names of the
content signals all of them share.

The chained JSON record stays the source of truth (it is what the log hashes, exports and
verifies); each format here is a copy made from it, for a Kafka topic of its own
(`--kafka-format`) or `vllm-audit export --format`. Every request-record field is mapped or
excluded with its reason in each format's FIELD MAP (tests/agent/test_siem_formats.py).

Imports: nothing of the agent (stdlib and orjson): records (export) and delivery use it.
"""
