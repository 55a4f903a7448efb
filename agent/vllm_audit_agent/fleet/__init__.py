"""The fleet service (`vllm-audit fleet`): every pod's record log, read from Kafka by a consumer
group, verified log by log as it streams (`verifier`, `log_state`), and kept in ClickHouse
(`store`, its tables in `schema`, the engine behind it in `backend`: chDB in-process or a
ClickHouse server). `consumer` reads the topics and commits offsets only after the store has
the batch; `service` wires it with its metrics (`metrics`) and options (`FleetConfig` in
config.py).

Owns: the fleet-wide store and its verification. Imports: `records`, `model`, `storage`.
"""
