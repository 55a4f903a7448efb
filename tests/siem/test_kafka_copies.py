"""`--kafka-format requests=ocsf+hec`: a real agent publishes each request record on
`vllm-audit.requests` (the chained record, unchanged: what the fleet verifies) and its copies
on `vllm-audit.requests.ocsf` and `.requests.hec`, through a real broker (Tansu)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.kafka_broker import KafkaBroker
from tests.agent.test_publisher import broker, consume, finished  # noqa: F401 (fixture)
from tests.siem.test_siem_formats import validate_ocsf
from tests.support.agent_harness import Hook, agent_config, until
from vllm_audit_agent.config import AgentConfig
from vllm_audit_agent.server import _publisher, running_agent


async def test_each_record_goes_with_its_copies(broker: KafkaBroker, tmp_path: Path) -> None:  # noqa: F811
    config = agent_config(tmp_path, kafka_bootstrap=broker.bootstrap,
                          kafka_formats=("requests=hec", "requests=ocsf"))
    publisher = _publisher(config)
    async with running_agent(config, publisher=publisher) as handle, \
            Hook(handle.state.config.ingest_socket) as hook:
        await hook.next("config")
        for i in range(5):
            await hook.send(i + 1, finished(f"0-{i:08x}"))
        await until(lambda: publisher.counters["published"] >= 5, "5 records published")
    records = [r for r in await consume(broker.bootstrap, "vllm-audit.requests", 5)
               if r.get("type") == "request"]
    ocsf = await consume(broker.bootstrap, "vllm-audit.requests.ocsf", 5)
    hec = await consume(broker.bootstrap, "vllm-audit.requests.hec", 5)
    assert "class_uid" not in records[0]  # the chained record is unchanged
    hashes = {r["hash"] for r in records}
    assert {e["metadata"]["uid"] for e in ocsf} == hashes
    for event in ocsf:
        validate_ocsf(event)
    assert {e["event"]["hash"] for e in hec if e["event"].get("type") == "request"} == hashes


def test_the_option_names_topics_and_formats() -> None:
    config = AgentConfig.from_env({"VLLM_AUDIT_KAFKA_FORMATS": "requests=json+ocsf,findings=ecs"})
    assert config.kafka_formats == ("findings=ecs", "requests=ocsf")
    for bad in ("requests", "nope=ocsf", "requests=xml"):
        with pytest.raises(ValueError, match="kafka format"):
            AgentConfig.from_env({"VLLM_AUDIT_KAFKA_FORMATS": bad})
