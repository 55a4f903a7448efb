"""Hooks' batches in: the gRPC ingest service (`service`: validate, append to the WAL, ack,
apply), the per-source de-duplication windows (`sources`), and the hooks' read-back of a
request's structured-output audit for its response (`read_back`).

Imports: the agent state, `control`, `telemetry`, `trails`, `model`, `storage`.
"""
