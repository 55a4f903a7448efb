"""Every query of the Grafana dashboard, evaluated by a real Prometheus server scraping a real
in-process agent that ingested real batches over its Unix socket. Bounded: the server is
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

from tests.support.agent_harness import Hook, agent, lifecycle
from tests.support.metrics_workload import gpu_reader, ingest
from tests.support.prometheus import needs_prometheus, running_prometheus
from vllm_audit.v1 import events_pb2 as pb

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "vllm-audit.json"
#: What Grafana would substitute for the dashboard's variables.
VARIABLES = {"$__rate_interval": "15s", "$job": "vllm-audit"}
SCRAPE_INTERVAL = "1s"


def queries() -> Iterator[tuple[str, str]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
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
