"""The Sigma rules of detections/sigma/ parse and convert with pySigma's ClickHouse,
Elasticsearch (Lucene, ES|QL) and Splunk backends, and each ClickHouse query, run on the fleet
store (chDB, its `events` view), fires on the rows it is about and on no benign row.

pySigma's backends live in the tools venv `make tools` makes (.cache/sigma-venv: they declare
Python >= 3.13 and install only beside the product); the conversion runs there, the queries
here, on the store the fleet service uses.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from vllm_audit_agent.fleet.store import FleetStore

REPO = Path(__file__).resolve().parents[2]
TOOLS_PYTHON = REPO / ".cache" / "sigma-venv" / "bin" / "python"
#: An hour ago, on a 10 s boundary (the window test's): within the store's retention, which
#: deletes older request rows at its first merge.
T0 = (int(time.time()) - 3600) // 10 * 10_000

pytestmark = pytest.mark.skipif(
    not TOOLS_PYTHON.exists(),
    reason=f"the Sigma tools venv is missing ({TOOLS_PYTHON}): run `make tools` "
           "(scripts/install_test_tools.sh), as `make test` does")


def convert(table: str = "vllm_audit.events") -> dict[str, dict[str, Any]]:
    out = subprocess.run([str(TOOLS_PYTHON), str(REPO / "scripts" / "sigma_convert.py"),
                          "--table", table], capture_output=True, text=True, timeout=300,
                         check=True)
    converted: dict[str, dict[str, Any]] = json.loads(out.stdout)
    return converted


@pytest.fixture(scope="module")
def converted() -> dict[str, dict[str, Any]]:
    return convert()


def request(trail: str, user: str, t: int, **fields: Any) -> dict[str, Any]:
    record = {"type": "request", "trail_id": trail, "revision": 0, "user": user,
              "tenant": "acme", "model": "m", "timestamp_ms": t, "recorded_unix_ms": t,
              "client_ip": "10.0.0.1", "auth_decision": "AUTH_STATUS_OK",
              "api_key_sha256": "", "status_code": 200, "state": "TRAIL_STATE_FINISHED",
              "content_signals": {"ruleset": "vllm-audit-signals/1", "prompt": {}, "output": {}}}
    record.update(fields)
    return record


def signals(prompt: dict[str, int] | None = None, output: dict[str, int] | None = None
            ) -> dict[str, Any]:
    return {"ruleset": "vllm-audit-signals/1", "prompt": prompt or {}, "output": output or {}}


def benign() -> list[dict[str, Any]]:
    """A day's ordinary traffic: 20 users, their own keys and addresses, no content flags; one
    busy user just under the rate threshold; one key from 3 addresses (a laptop, a phone, a
    proxy); signals not computed on some (null); a low-severity finding."""
    rows = []
    for u in range(20):
        for i in range(10):
            rows.append(request(f"b-{u}-{i}", f"user{u}", T0 + u * 1000 + i * 30_000,
                                client_ip=f"10.0.1.{u}", api_key_sha256=f"{u:064x}"))
    rows += [request(f"busy-{i}", "busy", T0 + i * 200) for i in range(40)]
    rows += [request(f"roam-{i}", "roamer", T0 + i * 1000, client_ip=f"10.0.2.{i % 3}",
                     api_key_sha256="ab" * 32) for i in range(9)]
    rows += [request(f"nosig-{i}", "offline", T0 + i, content_signals=None) for i in range(3)]
    rows.append({"type": "finding", "finding_id": "f-low", "rule": "repeated_refusals",
                 "ruleset": "vllm-audit-rules/1", "severity": "low",
                 "subject": {"kind": "model", "value": "m"}, "tenant": "", "observed": 21.0,
                 "threshold": 20.0, "window_start_ms": T0, "window_end_ms": T0 + 60_000,
                 "evidence_trail_ids": [], "evidence_count": 21, "summary": "s", "scope": "pod",
                 "recorded_unix_ms": T0 + 60_000})
    return rows


#: rule name -> (its hostile rows, the column of the result that names them, that value).
HOSTILE: dict[str, tuple[list[dict[str, Any]], str, str]] = {
    "vllm_audit_high_call_rate": (
        [request(f"crawl-{i}", "crawler", T0 + i * 60) for i in range(80)], "user", "crawler"),
    "vllm_audit_auth_rejected": (
        [request("h-401", "", T0, auth_decision="AUTH_STATUS_REJECTED", status_code=401,
                 client_ip="203.0.113.7")], "trail_id", "h-401"),
    "vllm_audit_auth_failure_burst": (
        [request(f"guess-{i}", "", T0 + i * 500, auth_decision="AUTH_STATUS_REJECTED",
                 status_code=401, client_ip="203.0.113.66") for i in range(25)],
        "client_ip", "203.0.113.66"),
    "vllm_audit_api_key_many_addresses": (
        [request(f"leak-{i}", "svc", T0 + i * 1000, api_key_sha256="ee" * 32,
                 client_ip=f"198.51.100.{i}") for i in range(8)], "api_key_sha256", "ee" * 32),
    "vllm_audit_prompt_sql_injection": (
        [request("h-sql", "eve", T0, content_signals=signals({"sql_injection": 2}))],
        "trail_id", "h-sql"),
    "vllm_audit_prompt_command_injection": (
        [request("h-cmd", "eve", T0, content_signals=signals({"command_injection": 1}))],
        "trail_id", "h-cmd"),
    "vllm_audit_prompt_injection": (
        [request("h-pi", "eve", T0, content_signals=signals({"prompt_injection": 1}))],
        "trail_id", "h-pi"),
    "vllm_audit_secret_in_content": (
        [request("h-secret", "eve", T0, content_signals=signals(output={"secret": 1}))],
        "trail_id", "h-secret"),
    "vllm_audit_pii_in_output": (
        [request("h-pii", "eve", T0, content_signals=signals(output={"pii_card": 3}))],
        "trail_id", "h-pii"),
    "vllm_audit_flagged_prompt": (
        [request("h-flag", "eve", T0, content_signals=signals({"secret": 1}))],
        "trail_id", "h-flag"),
    "vllm_audit_flagged_content_rate": (
        [request(f"probe-{i}", "prober", T0 + i * 1000,
                 content_signals=signals({"sql_injection": 1})) for i in range(6)],
        "user", "prober"),
    "vllm_audit_finding_high": (
        [{"type": "finding", "finding_id": "f-high", "rule": "high_call_rate",
          "ruleset": "vllm-audit-rules/1", "severity": "high",
          "subject": {"kind": "user", "value": "crawler"}, "tenant": "", "observed": 80.0,
          "threshold": 50.0, "window_start_ms": T0, "window_end_ms": T0 + 10_000,
          "evidence_trail_ids": ["crawl-0"], "evidence_count": 80, "summary": "s",
          "scope": "pod", "recorded_unix_ms": T0 + 10_000}], "subject.value", "crawler"),
}
#: Building blocks of the correlations that match every request (with a key) by design
#: (informational).
MATCH_ALL = {"vllm_audit_request", "vllm_audit_api_key_request"}


def payloads(rows: list[dict[str, Any]], log_id: str) -> Iterator[bytes]:
    for seq, row in enumerate(rows):
        yield orjson.dumps({"schema": 8, "log_id": log_id, "seq": seq, **row})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetStore]:
    fleet = FleetStore.open(str(tmp_path_factory.mktemp("fleet") / "chdb"))
    fleet.insert(list(payloads(benign(), "benign-log")))
    for name, (rows, _, _) in HOSTILE.items():
        fleet.insert(list(payloads(rows, f"hostile-{name}")))
    yield fleet
    fleet.backend.close()


def test_every_rule_converts_with_every_backend(converted: dict[str, dict[str, Any]]) -> None:
    files = {p.name for p in (REPO / "detections" / "sigma").glob("*.yml")}
    assert {rule["file"] for rule in converted.values()} == files
    assert set(converted) == set(HOSTILE) | MATCH_ALL, "a rule without its hostile rows here"
    for name, rule in converted.items():
        for backend in ("clickhouse", "esql", "splunk"):
            assert isinstance(rule[backend], list) and len(rule[backend]) == 1, (name, backend)
        # Lucene has no correlations (ES|QL converts them for Elasticsearch).
        if rule["correlation"]:
            assert "unsupported" in rule["lucene"], name
        else:
            assert len(rule["lucene"]) == 1, name


def test_each_clickhouse_query_fires_on_its_hostile_rows_and_no_benign_row(
        converted: dict[str, dict[str, Any]], store: FleetStore) -> None:
    benign_trails = {row.get("trail_id") for row in benign()} - {None}
    benign_values = {"user": {r.get("user") for r in benign()},
                     "client_ip": {r.get("client_ip") for r in benign()},
                     "api_key_sha256": {r.get("api_key_sha256") for r in benign()},
                     "subject.value": {"m"}}
    for name, rule in converted.items():
        rows = store.backend.rows(rule["clickhouse"][0])
        if name in MATCH_ALL:  # every request (with a key): benign ones included, by design
            assert rows and all(row["type"] == "request" for row in rows), name
            continue
        _, column, value = HOSTILE[name]
        found = {str(row.get(column)) for row in rows}
        assert value in found, f"{name} did not fire: {rule['clickhouse'][0]}"
        if column == "trail_id":
            assert not found & benign_trails, f"{name} fired on benign rows {found & benign_trails}"
        else:
            assert not found & benign_values[column], (name, found & benign_values[column])


def test_a_correlation_counts_within_the_window_it_is_given(store: FleetStore) -> None:
    """ClickHouse's correlation queries count over the table they read (the backend drops the
    timespan): scheduled over a window, the crawler's burst fires in it and not after it."""
    def fired(since_ms: int) -> set[str]:
        window = (f"(SELECT * FROM vllm_audit.events WHERE timestamp >= "
                  f"fromUnixTimestamp64Milli({since_ms}) AND timestamp < "
                  f"fromUnixTimestamp64Milli({since_ms + 10_000}))")
        query = convert(window)["vllm_audit_high_call_rate"]["clickhouse"][0]
        return {str(row["user"]) for row in store.backend.rows(query)}

    assert fired(T0) == {"crawler"}
    assert fired(T0 + 10_000) == set()
