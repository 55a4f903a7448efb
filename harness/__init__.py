"""Real parts that the demo, the benchmarks and the tests start: `vllm serve` and the agent as
processes, a Kafka-protocol broker, the tiny model. Product code (scripts/) imports from here,
never from tests/."""
