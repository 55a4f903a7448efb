"""Hooks' batches in: the gRPC ingest service (`service`: validate, append to the WAL, ack,
apply) and the per-source de-duplication windows (`sources`).

Imports: the agent state, `control`, `telemetry`, `trails`, `model`, `storage`.
"""
