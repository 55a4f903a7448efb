"""The rule engine on crafted streams: every rule fires on the stream it is about and stays
silent on a benign one; one finding per (rule, subject) per cool-down; bounded keys; the
thresholds file (YAML, JSON, TOML) and its typos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vllm_audit_agent.detections.engine import RuleEngine
from vllm_audit_agent.detections.finding import RULES, RULESET
from vllm_audit_agent.detections.settings import DetectionSettings, load_settings

T0 = 1_700_000_000_000


def request(i: int, t_ms: int, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "request", "trail_id": f"t{i}", "revision": 0, "created_unix_ms": t_ms,
        "user": f"user{i % 20}", "api_key_sha256": f"key{i % 20}", "client_ip": f"10.0.0.{i % 20}",
        "tenant": f"tenant{i % 4}", "model": "tiny", "status_code": 200, "error": "",
        "finish_reason": "stop", "prompt_tokens": 20, "completion_tokens": 30 + i % 7,
        "auth_decision": "AUTH_STATUS_OK", "content_signals": None}
    record.update(fields)
    return record


def benign(n: int = 3000, every_ms: int = 200) -> list[dict[str, Any]]:
    """20 users, 4 tenants, 5 calls/s in all: nothing any rule is about. A few ordinary errors
    and the odd flagged prompt, as in real traffic."""
    out = []
    for i in range(n):
        extra: dict[str, Any] = {}
        if i % 97 == 0:
            extra = {"status_code": 400, "error": "bad request"}
        if i % 50 == 0:
            extra["content_signals"] = {"ruleset": "vllm-audit-signals/1",
                                        "prompt": {"pii_email": 1}, "output": {}}
        out.append(request(i, T0 + i * every_ms, **extra))
    return out


def run(records: list[dict[str, Any]], settings: DetectionSettings | None = None
        ) -> tuple[RuleEngine, list[dict[str, Any]]]:
    engine = RuleEngine(settings or DetectionSettings())
    return engine, engine.feed_many(records)


def rules_of(findings: list[dict[str, Any]]) -> set[str]:
    return {f["rule"] for f in findings}


def test_a_benign_stream_finds_nothing() -> None:
    engine, findings = run(benign())
    assert findings == []
    assert engine.events == 3000
    assert set(engine.findings.values()) == {0}


def test_high_call_rate_names_the_user_once_per_cooldown() -> None:
    burst = [request(5000 + i, T0 + 600_000 + i * 50, user="mallory") for i in range(120)]
    engine, findings = run(benign() + burst)
    mine = [f for f in findings if f["rule"] == "high_call_rate"]
    assert [(f["subject"]["kind"], f["subject"]["value"]) for f in mine] == [("user", "mallory")]
    f = mine[0]
    assert f["observed"] == 51 and f["threshold"] == 50
    assert f["ruleset"] == RULESET and f["severity"] == "medium" and f["scope"] == "pod"
    assert len(f["evidence_trail_ids"]) == 50 and f["evidence_trail_ids"][-1] == "t5050"
    assert f["evidence_count"] == 51
    assert f["window_start_ms"] >= T0 + 600_000 and f["window_end_ms"] == T0 + 600_000 + 50 * 50
    assert "mallory" in f["summary"]
    assert engine.suppressed["high_call_rate"] == 69  # the rest of the burst: no new finding
    # After the cool-down the same burst is a new finding.
    later = [request(6000 + i, T0 + 1_000_000 + i * 50, user="mallory") for i in range(60)]
    assert rules_of(engine.feed_many(later)) == {"high_call_rate"}


def test_high_call_rate_per_api_key_and_address() -> None:
    burst = [request(5000 + i, T0 + 600_000 + i * 50, user=f"u{i}", api_key_sha256="k-shared",
                     client_ip="192.0.2.7") for i in range(60)]
    _, findings = run(benign() + burst)
    assert {(f["subject"]["kind"], f["subject"]["value"]) for f in findings} == {
        ("api_key", "k-shared"), ("client_ip", "192.0.2.7")}


def test_output_length_anomaly_against_the_users_baseline() -> None:
    base = benign()
    long = request(9000, T0 + 700_000, user="user3", completion_tokens=900)
    _, findings = run([*base, long])
    got = {(f["subject"]["kind"], f["subject"]["value"]): f for f in findings}
    assert set(got) == {("user", "user3"), ("model", "tiny")}
    f = got[("user", "user3")]
    assert f["rule"] == "output_length_anomaly" and f["severity"] == "high"
    assert f["observed"] == 900 and f["threshold"] == 256  # min_value: the baseline is ~33
    assert f["evidence_trail_ids"] == ["t9000"]
    # Not before the warm-up: a new user's first long answer is no anomaly.
    _, findings = run([request(1, T0, user="new", completion_tokens=5000)])
    assert findings == []


def test_auth_failure_burst_from_requests_and_access_refusals() -> None:
    failures = [request(5000 + i, T0 + 600_000 + i * 100, client_ip="203.0.113.9",
                        status_code=401, auth_decision="AUTH_STATUS_REJECTED") for i in range(21)]
    _, findings = run(benign() + failures)
    assert [(f["rule"], f["subject"]["value"]) for f in findings] == [
        ("auth_failure_burst", "203.0.113.9")]
    # The agent's own API: one aggregated refusal record stands for 25 refusals.
    access = {"type": "access", "outcome": "refused", "reason": "unauthenticated",
              "peer": "ipv4:198.51.100.2", "count": 25, "seq": 77, "recorded_unix_ms": T0}
    _, findings = run([access])
    assert [(f["rule"], f["subject"]["value"], f["observed"]) for f in findings] == [
        ("auth_failure_burst", "ipv4:198.51.100.2", 25)]
    # A rate-limited refusal is not a failed credential.
    _, findings = run([{**access, "reason": "rate_limited"}])
    assert findings == []


def test_one_api_key_from_many_addresses() -> None:
    spread = [request(5000 + i, T0 + 600_000 + i * 1000, api_key_sha256="k-stolen",
                      client_ip=f"198.51.100.{i}") for i in range(6)]
    _, findings = run(benign() + spread)
    assert [(f["rule"], f["subject"]["value"], f["observed"]) for f in findings] == [
        ("api_key_many_addresses", "k-stolen", 6)]
    assert len(findings[0]["evidence_trail_ids"]) == 6


def test_token_spend_spike_per_tenant() -> None:
    # tenant-x spends ~2k tokens a minute for 20 minutes, then 60k in one minute.
    steady = [request(5000 + i, T0 + i * 30_000, tenant="tenant-x", prompt_tokens=900,
                      completion_tokens=100, user="steady") for i in range(40)]
    spike = [request(6000 + i, T0 + 40 * 30_000 + i * 100, tenant="tenant-x",
                     prompt_tokens=2900, completion_tokens=100, user="steady") for i in range(20)]
    _, findings = run(steady + spike)
    assert [(f["rule"], f["subject"]["kind"], f["subject"]["value"]) for f in findings] == [
        ("token_spend_spike", "tenant", "tenant-x")]
    assert findings[0]["observed"] > 20_000 and findings[0]["tenant"] == "tenant-x"
    _, findings = run(steady)
    assert findings == []


def test_repeated_refusals_per_model() -> None:
    refused = [request(5000 + i, T0 + 600_000 + i * 200, model="guarded", tenant=f"t{i % 10}",
                       finish_reason="content_filter") for i in range(21)]
    _, findings = run(benign() + refused)
    assert [(f["rule"], f["subject"]["kind"], f["subject"]["value"]) for f in findings] == [
        ("repeated_refusals", "model", "guarded")]


def test_flagged_content_rate_per_user() -> None:
    signals = {"ruleset": "vllm-audit-signals/1", "prompt": {"sql_injection": 2}, "output": {}}
    probing = [request(5000 + i, T0 + 600_000 + i * 1000, user="prober",
                       content_signals=signals if i % 2 else None) for i in range(12)]
    _, findings = run(benign() + probing)
    assert [(f["rule"], f["subject"]["kind"], f["subject"]["value"]) for f in findings] == [
        ("flagged_content_rate", "user", "prober")]
    assert findings[0]["observed"] == 0.5 and findings[0]["evidence_count"] == 5
    # Absent or empty signals are not flagged.
    quiet = [request(5000 + i, T0 + i * 1000, user="u",
                     content_signals={"ruleset": "x", "prompt": {}, "output": {}})
             for i in range(30)]
    _, findings = run(quiet)
    assert findings == []


def test_later_revisions_are_not_counted_again() -> None:
    records = [request(1, T0 + i, user="a", revision=i) for i in range(200)]
    engine, findings = run(records)
    assert findings == [] and engine.events == 1


def test_keys_are_bounded_and_evictions_counted() -> None:
    settings = load_settings(None)
    settings = DetectionSettings(max_keys=100, rules=settings.rules)
    engine, _ = run([request(i, T0 + i, user=f"u{i}", api_key_sha256=f"k{i}",
                             client_ip=f"ip{i}") for i in range(1000)], settings)
    for rule in engine.rules:
        for lru in rule.keys.values():
            assert len(lru) <= 100
    assert engine.evicted["high_call_rate"] == 3 * 900


def test_findings_counters_start_at_zero_for_every_rule() -> None:
    engine = RuleEngine(DetectionSettings())
    assert sorted(rule for rule, _ in engine.findings) == sorted(RULES)
    assert set(engine.findings.values()) == {0}


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".toml"])
def test_thresholds_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rules{suffix}"
    if suffix == ".toml":
        path.write_text("max_keys = 50\n[rules.high_call_rate]\nmax_calls = 5\n"
                        "severity = \"critical\"\n[rules.repeated_refusals]\nenabled = false\n")
    else:
        data = {"max_keys": 50, "rules": {"high_call_rate": {"max_calls": 5, "severity": "critical"},
                                          "repeated_refusals": {"enabled": False}}}
        path.write_text(json.dumps(data))  # JSON is YAML too
    settings = load_settings(path)
    assert settings.max_keys == 50
    engine = RuleEngine(settings)
    assert "repeated_refusals" not in {r.name for r in engine.rules}
    findings = engine.feed_many([request(i, T0 + i, user="a") for i in range(6)])
    assert [(f["rule"], f["severity"], f["observed"]) for f in findings] == [
        ("high_call_rate", "critical", 6)]


@pytest.mark.parametrize(("text", "message"), [
    ("rules: {high_call_rate: {max_cals: 5}}", "has no setting max_cals"),
    ("rules: {no_such_rule: {}}", "unknown rule 'no_such_rule'"),
    ("rules: {high_call_rate: {severity: urgent}}", "severity 'urgent'"),
    ("rules: {high_call_rate: {max_calls: -1}}", "must be a number >= 0"),
    ("rules: {api_key_many_addresses: {subjects: [client_ip]}}", "subjects"),
    ("max_keys: 0", "max_keys"),
])
def test_a_wrong_thresholds_file_names_the_mistake(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError, match=message):
        load_settings(path)
