"""Moved to harness/kafka_broker.py (the demo and benchmarks use it too); kept for the tests."""

from harness.kafka_broker import KafkaBroker

__all__ = ["KafkaBroker"]
