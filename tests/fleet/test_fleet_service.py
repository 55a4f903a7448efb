"""`vllm-audit fleet` as a real process on a real broker, fed by two real agents (two pods):
every record of both logs stored once, each log verified, a `kill -9` mid-stream losing
nothing and showing no duplicate, one user's requests listed across both pods through the
fleet's own query API (a tenant-auditor seeing only its tenant), and a rewritten copy
published later flagged by log id."""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from harness.kafka_broker import KafkaBroker
from harness.procs import Proc, base_env, free_port, wait_until
from tests.agent.test_auth import http, tokens_file
from tests.support.agent_harness import Hook, agent_config, until
from vllm_audit.v1 import query_pb2 as q
from vllm_audit.v1 import query_pb2_grpc
from vllm_audit_agent.cli.client import aio_channel
from vllm_audit_agent.delivery.kafka_sink import KafkaPublisher
from vllm_audit_agent.fleet.store import FleetStore, TrailQuery
from vllm_audit_agent.records.chain import PUBLIC_KEY_NAME, seal
from vllm_audit_agent.records.verify import kafka_payloads
from vllm_audit_agent.server import running_agent

PREFIX = "vllm-audit"
REQUESTS = 15
#: (tenant, user) of a pod's odd and even requests.
WHO = {1: ("acme", "alice"), 0: ("globex", "bob")}


def request_id(pod: str, seq: int) -> str:
    return f"{seq}-{pod}0000"

pytestmark = pytest.mark.faults


async def two_pods(tmp: Path, bootstrap: str, keys: Path) -> None:
    for name in ("poda", "podb"):
        config = agent_config(tmp / name, kafka_bootstrap=bootstrap)
        publisher = KafkaPublisher(bootstrap, config.kafka_topic_prefix, max_backoff=0.5)
        async with running_agent(config, publisher=publisher) as handle, \
                Hook(config.ingest_socket) as hook:
            for seq in range(1, REQUESTS + 1):
                await hook.send(seq, http(request_id(name, seq), *WHO[seq % 2],
                                          time.time_ns()))
            await until(lambda h=handle, p=publisher: h.state.records.durable_seq
                        >= REQUESTS + 2 and p.backlog_records == 0, "published")
        (keys / f"{name}.pub").write_bytes((config.data_dir / PUBLIC_KEY_NAME).read_bytes())


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@dataclass(frozen=True)
class Ports:
    metrics: int
    query: int
    api_http: int


def fleet(tmp: Path, bootstrap: str, keys: Path, ports: Ports, n: int,
          extra: Sequence[str] = ()) -> Proc:
    return Proc([sys.executable, "-m", "vllm_audit_agent.cli", "fleet", "--store",
                 str(tmp / "store"), "--kafka-bootstrap", bootstrap, "--log-public-key",
                 str(keys), "--http-address", f"127.0.0.1:{ports.metrics}",
                 "--max-batch-records", "2", "--gap-seconds", "60",
                 "--query-address", f"127.0.0.1:{ports.query}",
                 "--api-http-address", f"127.0.0.1:{ports.api_http}",
                 "--api-data-dir", str(tmp / "api"), "--auth-tokens-file", str(tokens_file(tmp)),
                 *extra],
                base_env(), tmp / f"fleet-{n}.log")


async def listed(ports: Ports, token: str, **where: str) -> list[q.TrailSummary]:
    """ListTrails through the fleet's gRPC API, every page."""
    channel = aio_channel(f"127.0.0.1:{ports.query}", f"{token}-secret")
    try:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        trails: list[q.TrailSummary] = []
        page_token = ""
        while True:
            page = await stub.ListTrails(q.ListTrailsRequest(page_size=10, page_token=page_token,
                                                             **where), timeout=30)
            trails += page.trails
            page_token = page.next_page_token
            if not page_token:
                return trails
    finally:
        await channel.close()


def heads(port: int) -> dict[str, float]:
    return {k: v for k, v in metrics(port).items()
            if k.startswith("vllm_audit_fleet_log_verified_seq")}


async def test_two_pods_stored_verified_killed_and_a_rewrite_flagged(tmp_path: Path) -> None:
    broker = KafkaBroker()
    await asyncio.to_thread(broker.__enter__)
    procs: list[Proc] = []
    try:
        keys = tmp_path / "keys"
        keys.mkdir()
        await two_pods(tmp_path, broker.bootstrap, keys)
        published = await kafka_payloads(broker.bootstrap, [f"{PREFIX}.requests",
                                                            f"{PREFIX}.checkpoints"])
        logs: dict[str, list[dict[str, object]]] = {}
        for p in published:
            record = orjson.loads(p)
            logs.setdefault(record["log_id"], []).append(record)
        assert len(logs) == 2
        last = {log_id: max(int(str(r["seq"])) for r in rs) for log_id, rs in logs.items()}
        ports = Ports(free_port(), free_port(), free_port())
        port = ports.metrics
        procs.append(fleet(tmp_path, broker.bootstrap, keys, ports, 1))
        # kill -9 mid-stream: some records stored and committed, not all
        await asyncio.to_thread(wait_until, lambda: sum(heads(port).values()) >= 8, 60,
                                "the fleet service part-way")
        procs[0].kill()
        procs.append(fleet(tmp_path, broker.bootstrap, keys, ports, 2))

        def all_verified() -> bool:
            found = heads(port)
            return sorted(found.values()) == sorted(last.values())
        await asyncio.to_thread(wait_until, all_verified, 60, "both logs verified")
        seen = metrics(port)
        assert seen['vllm_audit_fleet_logs{status="verified"}'] == 2
        assert not [k for k in seen if k.startswith("vllm_audit_fleet_log_broken")]

        # one user's requests across both pods, through the fleet's query API, each once. The
        # heads are the verifier's: a batch verified is in the store once its insert (under
        # way meanwhile: pipeline.py) is done, so the listing waits for that.
        expected = sorted(request_id(pod, seq) for pod in ("poda", "podb")
                          for seq in range(1, REQUESTS + 1, 2))
        for _ in range(60):
            alice = await listed(ports, "aud", user="alice")
            # a tenant-auditor sees only its tenant, fleet-wide
            globex = await listed(ports, "tb")
            if len(alice) >= len(expected) and len(globex) >= 2 * (REQUESTS // 2):
                break
            await asyncio.sleep(0.5)
        assert sorted(t.request_id for t in alice) == expected
        assert {t.tenant for t in globex} == {"globex"}
        assert len(globex) == 2 * (REQUESTS // 2)
        assert await listed(ports, "tb", user="alice") == []

        # a rewritten copy of one log's record, published as the agent would (keyed by log)
        log_id = next(iter(logs))
        original = sorted(logs[log_id], key=lambda r: int(str(r["seq"])))[4]
        forged = dict(original, user="mallory")
        del forged["hash"]
        value = seal(forged, int(str(original["seq"])), str(original["prev_hash"]))
        from aiokafka import AIOKafkaProducer
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(f"{PREFIX}.requests", value, key=log_id.encode())
        finally:
            await producer.stop()
        def flagged() -> list[str]:  # by log id (and the pod its genesis names)
            return [k for k, v in metrics(port).items() if v == 1 and k.startswith(
                f'vllm_audit_fleet_log_broken{{log_id="{log_id}"')
                and 'reason="conflicting_duplicate"' in k]
        await asyncio.to_thread(wait_until, flagged, 30, "the rewritten log flagged")
        procs[-1].stop()

        store = FleetStore.open(str(tmp_path / "store"))
        try:
            for log_id, records in logs.items():  # every record once, the original kept
                assert store.count(log_id) == len(records) == last[log_id]
                exported = [orjson.loads(p) for p in store.export(TrailQuery())
                            if orjson.loads(p)["log_id"] == log_id]
                assert len(exported) == len({r["seq"] for r in exported}) == REQUESTS
                assert "mallory" not in {r.get("user") for r in exported}
            trails = store.list_trails(TrailQuery(), 100, None)
            assert len(trails) == len({t["trail_id"] for t in trails}) == 2 * REQUESTS
        finally:
            store.close()
    finally:
        for proc in procs:
            proc.stop()
        await asyncio.to_thread(broker.__exit__, None, None, None)
