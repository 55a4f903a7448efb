"""Records leaving the pod: the Kafka publisher that reads the record log from a persisted
cursor (`publisher`) and Kafka's key partitioner (`kafka_partition`).

Owns: the publish cursor. Imports: `records`, `model`, `storage`.
"""
