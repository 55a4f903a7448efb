"""A real Prometheus server (Debian's `prometheus`, installed by scripts/install_test_tools.sh)
on a free loopback port, scraping the targets a test names and evaluating the rule files it
gives. Bounded: every wait has a deadline, and the server is stopped by its own pid."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus not installed: apt-get install -y prometheus (CI must install it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.base = base
        self.proc = proc
        self.log = log

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.api("/api/v1/query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single sample `expr` returns, or None when it returns nothing."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> dict[str, str]:
        """Active alerts by name: their state (pending or firing)."""
        out: dict[str, str] = {}
        for alert in self.api("/api/v1/alerts")["data"]["alerts"]:
            name = alert["labels"]["alertname"]
            if out.get(name) != "firing":
                out[name] = alert["state"]
        return out

    def wait(self, what: str, check: Callable[[], object], timeout: float = 60.0,
             interval: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = check()
                if value:
                    return value
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; active "
                                     f"alerts {self.safe_alerts()}")
            time.sleep(interval)

    def safe_alerts(self) -> dict[str, str] | str:
        try:
            return self.alerts()
        except OSError as exc:
            return repr(exc)

    def scraped(self, job: str, scrapes: int = 3, timeout: float = 60.0) -> None:
        self.wait(f"{scrapes} scrapes of {job}", lambda: self.query(
            f'count_over_time(up{{job="{job}"}}[1m]) >= {scrapes} and up{{job="{job}"}} == 1'),
            timeout)


def rules_with_short_for(source: Path, dest: Path, fors: dict[str, str],
                         default_for: str | None = None) -> Path:
    """A copy of a rule file with each named alert's `for` replaced (`default_for`: every
    other alert that has one), so a test sees pending -> firing in seconds."""
    doc = yaml.safe_load(source.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert")
            if name in fors:
                rule["for"] = fors[name]
            elif name and default_for is not None and "for" in rule:
                rule["for"] = default_for
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


@contextmanager
def running_prometheus(tmp: Path, job: str, targets: Sequence[str],
                       rule_files: Sequence[Path] = (), interval: str = "1s",
                       start_timeout: float = 60.0) -> Iterator[Prometheus]:
    port = _free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}]}))
    log = tmp / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=out)
    server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        server.wait("prometheus ready", lambda: proc.poll() is None
                    and server.api("/api/v1/status/buildinfo"), start_timeout)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
