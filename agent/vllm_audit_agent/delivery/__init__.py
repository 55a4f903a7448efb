"""Records leaving the pod: the publisher that reads the record log from a persisted cursor
(`publisher`) through a sink (`sink`): Kafka (`kafka_sink`, with Kafka's key partitioner in
`kafka_partition`) or, without Kafka, memory while the record log is the archive (`no_kafka`);
engine-stats snapshots take a bounded side queue to the same sink (`engine_stats`).
Checkpoints go to witnesses off the pod, whose cosignatures come back as records
(`cosigning`).

Owns: the publish cursor. Imports: `records`, `model`, `storage`.
"""
