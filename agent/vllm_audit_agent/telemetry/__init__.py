"""What the agent measures beside the records: GPU sampling (`gpu`, `gpu_metrics`,
`fake_nvml`), engine snapshots (`engines`, `stats_history`), per-model request metrics
(`request_metrics`) and the closed sets of loss reasons (`reasons`).

Owns: snapshots a scrape reads. Imports: `delivery`, `records`, `model`, `storage`.
"""
