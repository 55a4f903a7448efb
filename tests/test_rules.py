"""Prometheus rules: promtool's own unit tests (incl. an alert firing on the first loss), the
chart shipping the same file, and every metric a rule reads exported by a real agent, witness
or fleet service."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from harness.kafka_broker import KafkaBroker
from harness.procs import free_port, start_witness, wait_until
from tests.agent.test_metrics import get
from tests.fleet.test_fleet_service import Ports, fleet, two_pods
from tests.support.agent_harness import Hook, agent
from tests.support.metrics_workload import gpu_reader, ingest
from vllm_audit_agent.records.chain import public_pem

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
CHART_RULES = REPO / "helm" / "vllm-audit" / "files" / "alerts.yml"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed: apt-get install -y prometheus (CI must install it)")
#: Metric names in PromQL, not the recording rules' level:name:op names.
METRIC = re.compile(r"(?<![:\w])(vllm_audit_\w+|DCGM_FI_\w+)")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False,
                          cwd=RULES.parent)


@needs_promtool
def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    check = run("promtool", "check", "rules", RULES.name)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = run("promtool", "test", "rules", "alerts_test.yml")
    assert tests.returncode == 0, tests.stdout + tests.stderr
    # The suite holds the case this design exists for: the first loss of a counter born at 0.
    suite = yaml.safe_load((RULES.parent / "alerts_test.yml").read_text())
    assert any(t["name"] == "first loss fires (counter born at 0)" for t in suite["tests"])
    # And the detections' (issue 21): a rule's first finding fires, by its severity.
    assert any(t["name"] == "the first finding of a rule fires" for t in suite["tests"])


def test_the_chart_ships_the_same_rules() -> None:
    assert CHART_RULES.read_bytes() == RULES.read_bytes()


def rule_metric_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {name for g in groups for rule in g["rules"] for name in METRIC.findall(rule["expr"])}


def witness_metric_names(tmp_path: Path) -> set[str]:
    """What a real `vllm-audit witness` exports (its rules read vllm_audit_witness_server_*)."""
    log_pub = tmp_path / "log.pub"
    log_pub.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    proc, base = start_witness(tmp_path, tmp_path / "w.key", [log_pub], tmp_path / "w-state")
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            body = response.read().decode()
    finally:
        proc.stop()
    return {s.name for f in text_string_to_metric_families(body) for s in f.samples}


async def test_every_metric_a_rule_reads_is_exported(tmp_path: Path) -> None:
    # A witness and an archive nobody listens for: the agent exports their series from the start.
    witness = f"http://127.0.0.1:{free_port()}"
    archive = {"archive_url": "s3://audit/pod", "archive_endpoint": f"http://127.0.0.1:{free_port()}"}
    async with agent(tmp_path, gpu_reader=gpu_reader(pid=4242), witnesses=(witness,), **archive) \
            as (handle, _), Hook(handle.state.config.ingest_socket) as hook:
        await ingest(hook, 1, 3, pid=4242)
        _, body = await get(handle)
    exported = {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    exported |= await asyncio.to_thread(witness_metric_names, tmp_path)
    used = {name for name in rule_metric_names() if not name.startswith(FLEET)}
    assert len(used) > 20
    assert used - exported == set()


FLEET = "vllm_audit_fleet_"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def test_every_fleet_metric_a_rule_reads_is_exported(tmp_path: Path) -> None:
    """A real `vllm-audit fleet` over two real agents' logs. It trusts another key than
    theirs, so both logs are flagged (untrusted): the per-log series the alerts read, broken
    included, are then exported by a real process, not only written in the rules. With a
    witness key, the witnessing series (unwitnessed) too, and the consumer's lag."""
    broker = KafkaBroker()
    await asyncio.to_thread(broker.__enter__)
    proc = None
    try:
        await two_pods(tmp_path, broker.bootstrap, tmp_path)  # their keys, not given to the fleet
        other = tmp_path / "other.pub"
        other.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
        ports = Ports(free_port(), free_port(), free_port())
        proc = fleet(tmp_path, broker.bootstrap, other, ports, 1, ["--witness-key", str(other)])

        def both_flagged() -> bool:
            body = scrape(ports.metrics)
            return body.count("vllm_audit_fleet_log_broken{") == 2 and "untrusted" in body
        await asyncio.to_thread(wait_until, both_flagged, 60, "both logs flagged untrusted")
        body = await asyncio.to_thread(scrape, ports.metrics)
    finally:
        if proc is not None:
            proc.stop()
        await asyncio.to_thread(broker.__exit__, None, None, None)
    exported = {s.name for f in text_string_to_metric_families(body) for s in f.samples}
    used = {name for name in rule_metric_names() if name.startswith(FLEET)}
    assert len(used) == 6
    assert used - exported == set()
