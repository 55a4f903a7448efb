"""Every query of the Grafana dashboard, evaluated by a real Prometheus server scraping a real
in-process agent that ingested real batches over its Unix socket — and the fleet row's, a real
`vllm-audit fleet` consuming real record logs from a real broker. Bounded: the servers are
started on loopback by the test, polled with deadlines, and stopped by pid in `finally`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.kafka_broker import KafkaBroker
from harness.procs import start_fleet
from tests.support.agent_harness import Hook, agent, lifecycle
from tests.support.metrics_workload import gpu_reader, ingest
from tests.support.prometheus import needs_prometheus, running_prometheus
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.delivery.kafka_sink import KafkaSink
from vllm_audit_agent.records.chain import Signer
from vllm_audit_agent.records.entry import TOPICS
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.records.note import cosign, parse
from vllm_audit_agent.records.read_only import read_records

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "vllm-audit.json"
#: What Grafana would substitute for the dashboard's variables.
VARIABLES = {"$__rate_interval": "15s", "$job": "vllm-audit"}
SCRAPE_INTERVAL = "1s"


#: The row of the fleet service's panels (its own process: the fleet test scrapes it).
FLEET_ROW = "Fleet"


def queries(fleet: bool = False) -> Iterator[tuple[str, str]]:
    """The agents' panels' queries, or (`fleet`) the fleet row's."""
    row = ""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        elif row.startswith(FLEET_ROW) == fleet:
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"]


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def test_dashboard_is_generated_and_every_panel_has_a_query() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "vllm-audit"
    titles = [p["title"] for p in board["panels"] if p["type"] != "row"]
    assert len(titles) == len(set(titles))
    for p in board["panels"]:
        assert p["type"] == "row" or p["targets"], p["title"]
    out = subprocess.run([sys.executable, str(DASHBOARD.parent / "gen_dashboard.py")],
                         capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(out.stdout) == board, "regenerate: deploy/grafana/gen_dashboard.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_for(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def start_prometheus(config: Path, tmp: Path, port: int) -> subprocess.Popen[bytes]:
    with (tmp / "prometheus.log").open("w") as log:
        return subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=log)


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=5)


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="prometheus not installed: apt-get install -y prometheus (CI must install it)")
async def test_a_real_prometheus_answers_every_dashboard_query(tmp_path: Path) -> None:
    async with agent(tmp_path / "agent", gpu_reader=gpu_reader(pid=4242)) as (handle, _), \
            Hook(handle.state.config.ingest_socket) as hook:
        seq = await ingest(hook, 1, 3, pid=4242)
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "vllm-audit",
                                "static_configs": [{"targets": [handle.http_address]}]}]}))
        server = start_prometheus(config, tmp_path, port)
        base = f"http://127.0.0.1:{port}"
        try:
            def scraped_enough() -> bool:
                found = api(base, "/api/v1/query",
                            query='count_over_time(up{job="vllm-audit"}[1m]) >= 4 and '
                                  'up{job="vllm-audit"} == 1')
                return bool(found["data"]["result"])

            # More traffic while Prometheus scrapes, so rates have something to show.
            await asyncio.to_thread(wait_for, "prometheus ready",
                                    lambda: api(base, "/api/v1/status/buildinfo"))
            await ingest(hook, seq, 3, pid=4242)
            await asyncio.to_thread(wait_for, "4 scrapes of the agent", scraped_enough)
            results = {}
            for title, expr in queries():
                answer = await asyncio.to_thread(api, base, "/api/v1/query",
                                                 query=substitute(expr))
                assert answer["status"] == "success", (title, expr, answer)
                results[(title, expr)] = answer["data"]["result"]
        finally:
            await asyncio.to_thread(stop, server)
    empty = [key for key, result in results.items() if not result]
    assert not empty, f"queries with no data: {empty}"
    assert len(results) > 50


#: A directory whose node_modules holds `@grafana/schema` and `typescript` (the test does not
#: reach the npm registry): `npm install --prefix DIR @grafana/schema typescript`.
SCHEMA_DIR_ENV = "VLLM_AUDIT_GRAFANA_SCHEMA_DIR"


def test_dashboard_type_checks_against_grafana_schema(tmp_path: Path) -> None:
    schema_dir = os.environ.get(SCHEMA_DIR_ENV)
    node = shutil.which("node")
    if not schema_dir or node is None:
        pytest.skip(f"{SCHEMA_DIR_ENV} unset or no node: "
                    f"npm install --prefix DIR @grafana/schema typescript; {SCHEMA_DIR_ENV}=DIR")
    modules = Path(schema_dir) / "node_modules"
    (tmp_path / "node_modules").symlink_to(modules)
    # An object literal typed as Dashboard: tsc rejects unknown keys and wrong value types.
    (tmp_path / "check.ts").write_text(
        "import type { Dashboard } from '@grafana/schema';\n"
        f"const board: Dashboard = {DASHBOARD.read_text()};\nexport default board;\n")
    (tmp_path / "tsconfig.json").write_text(json.dumps({"compilerOptions": {
        "strict": True, "noEmit": True, "module": "nodenext", "moduleResolution": "nodenext",
        "skipLibCheck": True, "target": "es2020"}, "files": ["check.ts"]}))
    out = subprocess.run([node, str(modules / "typescript" / "bin" / "tsc"), "-p", "."],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def token_panel_queries() -> dict[str, str]:
    """The "tokens per request" panel's queries by legend kind (prompt, completion)."""
    out = {}
    for title, expr in queries():
        if "tokens" in title.lower() and "_tokens_bucket" in expr:
            out["prompt" if "prompt_tokens" in expr else "completion"] = substitute(expr)
    assert set(out) == {"prompt", "completion"}, out
    return out


async def send_requests(hook: Hook, first_seq: int, prompts: list[int], completion: int) -> int:
    seq = first_seq
    for i, prompt in enumerate(prompts):
        rid = f"tok{first_seq}x{i}"
        http = pb.Event(time_unix_nano=10**15, request_id=rid, http=pb.HttpRequest(
            status_code=200, model="m", prompt_tokens=prompt, completion_tokens=completion,
            latency_ms=900.0, ttft_ms=100.0))
        engine = lifecycle(f"chatcmpl-{rid}-1a2b3c4d", pb.LIFECYCLE_PHASE_FINISHED, 10**15,
                           finish_reason="stop", num_output_tokens=completion)
        await hook.send(seq, http, engine, model="m", pid=4242)
        seq += 1
    return seq


@needs_prometheus
async def test_the_dashboard_token_percentiles_are_within_10_percent(tmp_path: Path) -> None:
    """Issue 25: ~320 prompt / 64 completion tokens per request showed as 640 / 40 with
    power-of-4 buckets. The dashboard's own queries, by a real Prometheus."""
    prompts = [300 + (i * 7) % 41 for i in range(60)]  # 300..340, median ~320
    truth = {"prompt": sorted(prompts)[len(prompts) // 2], "completion": 64}
    async with agent(tmp_path / "agent") as (handle, _), \
            Hook(handle.state.config.ingest_socket) as hook:
        with running_prometheus(tmp_path, "vllm-audit", [handle.http_address]) as prom:
            # A model's histogram series appears with its first request: one first, scraped,
            # so that the rate over the panel's window sees the whole measured wave.
            seq = await send_requests(hook, 1, [5000], 1)
            await asyncio.to_thread(prom.scraped, "vllm-audit", 3)
            await send_requests(hook, seq, prompts, truth["completion"])
            panel = token_panel_queries()

            def estimates() -> dict[str, float] | None:
                found = {kind: prom.value(expr) for kind, expr in panel.items()}
                if any(v is None or v != v for v in found.values()):  # none yet, or NaN
                    return None
                return {kind: float(v) for kind, v in found.items() if v is not None}

            got = await asyncio.to_thread(prom.wait, "token percentiles", estimates, 60.0)
    for kind, estimate in got.items():
        assert abs(estimate - truth[kind]) <= 0.1 * truth[kind], (kind, estimate, truth[kind])


class FleetInput:
    """Real record logs published as the agents publish them (each record to its topic, keyed
    by log_id): one whose key the fleet trusts, cosigned by a witness it trusts, and one signed
    by a key it does not (a break every panel of breaks must show)."""

    def __init__(self, tmp: Path) -> None:
        self.key, self.witness = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        self.trusted = RecordLog(tmp / "trusted", 1 << 30, "never", Signer(self.key),
                                 checkpoint_every=1000)
        self.stranger = RecordLog(tmp / "stranger", 1 << 30, "never",
                                  Signer(Ed25519PrivateKey.generate()), checkpoint_every=1000)
        self.sent: dict[Path, int] = {}
        self.n = 0

    def key_files(self, tmp: Path) -> tuple[Path, Path]:
        paths = (tmp / "log.pub", tmp / "witness.pub")
        for path, key in zip(paths, (self.key, self.witness), strict=True):
            path.write_bytes(key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return paths

    async def write(self, requests: int) -> None:
        """Requests and a checkpoint in both logs; the trusted one's checkpoint cosigned."""
        for log in (self.trusted, self.stranger):
            for _ in range(requests):
                self.n += 1
                log.append({"type": "request", "schema": 6, "trail_id": f"t{self.n}",
                            "revision": 0, "timestamp_ms": time.time_ns() // 1_000_000,
                            "user": "alice", "model": "tiny"})
            log.checkpoint()
            await log.write_pending()
        checkpoint = self.unsent(self.trusted)[-1]
        note = parse(checkpoint["note"])
        note = note.with_signature(*cosign(note.checkpoint, "w1", self.witness, int(time.time())))
        self.trusted.append_cosignature(checkpoint["seq"], checkpoint["tree_size"], "w1",
                                        note.text())
        await self.trusted.write_pending()

    def unsent(self, log: Any) -> list[dict[str, Any]]:
        return [json.loads(p) for p in list(read_records(log.directory))[self.sent.get(
            log.directory, 0):]]

    def log_id(self, log: Any) -> str:
        return str(log.log_id)

    def last_seq(self, log: Any) -> int:
        return int(json.loads(list(read_records(log.directory))[-1])["seq"])

    async def publish(self, bootstrap: str) -> None:
        sink = KafkaSink(bootstrap, "vllm-audit")
        await sink.connect()
        try:
            for log in (self.trusted, self.stranger):
                payloads = list(read_records(log.directory))
                for payload in payloads[self.sent.get(log.directory, 0):]:
                    record = json.loads(payload)
                    await (await sink.send(TOPICS[record["type"]], record["log_id"].encode(),
                                           payload))
                self.sent[log.directory] = len(payloads)
        finally:
            await sink.close(5.0)


@needs_prometheus
def test_a_real_prometheus_answers_every_fleet_panel_from_a_real_fleet(
        tmp_path: Path) -> None:
    feed = FleetInput(tmp_path / "logs")
    log_pub, witness_pub = feed.key_files(tmp_path)
    asyncio.run(feed.write(5))
    with KafkaBroker() as kafka:
        asyncio.run(feed.publish(kafka.bootstrap))
        fleet, _, _, metrics = start_fleet(
            tmp_path, kafka.bootstrap,
            ["--log-public-key", str(log_pub), "--witness-key", str(witness_pub),
             "--gap-seconds", "5"])
        try:
            target = metrics.removeprefix("http://")
            with running_prometheus(tmp_path / "prom", "vllm-audit", [target]) as prom:
                prom.scraped("vllm-audit", 3)
                for _ in range(3):  # more while Prometheus scrapes, so rates have something
                    asyncio.run(feed.write(5))
                    asyncio.run(feed.publish(kafka.bootstrap))
                    time.sleep(1.5)

                def answered() -> dict[tuple[str, str], list[dict[str, Any]]] | None:
                    found = {(t, e): prom.query(substitute(e)) for t, e in queries(fleet=True)}
                    return None if any(not r for r in found.values()) else found

                results = prom.wait("every fleet panel", answered, 60.0)
                # What the panels show is what happened: the stranger's log untrusted, the
                # trusted one verified to its last record and witnessed up to its checkpoint.
                trusted = feed.log_id(feed.trusted)
                head = prom.value(f'max(vllm_audit_fleet_log_verified_seq{{log_id="{trusted}"}})')
                witnessed = prom.value(
                    f'max(vllm_audit_fleet_log_witnessed_tree_size{{log_id="{trusted}"}})')
        finally:
            fleet.stop()
    assert len(results) >= 9
    breaks = [r["metric"] for (title, _), found in results.items() if title == "Fleet breaks"
              for r in found]
    assert (feed.log_id(feed.stranger), "untrusted_key") in {
        (b.get("log_id"), b.get("reason")) for b in breaks}
    assert head == feed.last_seq(feed.trusted) and witnessed is not None and witnessed > 20
