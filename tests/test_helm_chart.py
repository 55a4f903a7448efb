"""The Helm chart, rendered and linted by Helm's own Go SDK (helm-python-sdk, no cluster and
no helm binary) and validated against Kubernetes' schemas (kubernetes-validate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from agent.cli import _parser

CHART = Path(__file__).resolve().parents[1] / "helm" / "vllm-audit"
#: The oldest Kubernetes the chart supports (native sidecars) and the newest schema we have.
KUBE_VERSIONS = ("1.29.0", "1.37.0")
SECRET = {"audit": {"hmacKeySecret": {"name": "audit-hmac"}}}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = helm.Chart.load(CHART).render(values, name="llm", namespace="ml",
                                              is_install=True)
    return [doc for path, text in sorted(manifests.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_chart_lints_clean_and_validates_against_kubernetes_schemas() -> None:
    report = helm.lint(CHART, SECRET, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    for values in (SECRET, {**SECRET, "agent": {"kafka": {"bootstrap": "kafka:9092"},
                                                "wal": {"existingClaim": "audit-wal"}}}):
        for doc in render(values):
            for version in KUBE_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)


def test_agent_is_a_native_sidecar_sharing_the_socket_with_vllm() -> None:
    spec = pod_spec(render(SECRET))
    (agent,) = spec["initContainers"]
    (vllm,) = spec["containers"]
    assert agent["restartPolicy"] == "Always"  # started before vLLM, stopped after it
    # Every flag the chart gives the agent is one the CLI accepts, and they agree.
    args = _parser().parse_args([*agent["command"][1:], *agent["args"]])
    env = env_of(vllm)
    assert env["VLLM_AUDIT_ENABLED"] == "true"
    assert env["VLLM_AUDIT_AGENT_ADDRESS"] == str(args.ingest_socket)
    assert env["VLLM_AUDIT_LEVEL"] == args.audit_level == "summary"
    assert env["VLLM_AUDIT_HMAC_KEY"] == {"secretKeyRef": {"name": "audit-hmac", "key": "hmac-key"}}
    assert "--middleware=vllm_hooks.middleware.AuditMiddleware" in vllm["args"]
    socket_dir = str(args.ingest_socket.parent)
    mounts = {c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
              for c in (agent, vllm)}
    assert mounts["audit-agent"]["audit-socket"] == mounts["vllm"]["audit-socket"] == socket_dir
    assert mounts["audit-agent"]["audit-wal"] == str(args.data_dir)
    assert "audit-wal" not in mounts["vllm"]
    # Probes hit the agent's real endpoints on the port it listens on.
    port = int(args.http_address.rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert ports["audit-metrics"] == port
    assert agent["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert args.kafka_bootstrap is None


def test_kafka_and_overrides_reach_the_agent() -> None:
    spec = pod_spec(render({**SECRET, "audit": {**SECRET["audit"], "level": "full"},
                            "agent": {"kafka": {"bootstrap": "kafka:9092"}, "gpu": "none"}}))
    (agent,) = spec["initContainers"]
    args = _parser().parse_args([*agent["command"][1:], *agent["args"]])
    assert (args.kafka_bootstrap, args.kafka_topic_prefix) == ("kafka:9092", "vllm-audit")
    assert args.audit_level == "full" and args.gpu == "none"
    assert "env" not in agent  # no NVML visibility asked for without a GPU reader


def test_missing_hmac_key_is_a_clear_error() -> None:
    with pytest.raises(helm.HelmError, match=r"audit.hmacKeySecret.name is required"):
        render({})
    # Without hashing no key is needed.
    none = {"audit": {"capture": {"prompt": "none", "output": "redact", "clientIp": "full"}}}
    assert "VLLM_AUDIT_HMAC_KEY" not in env_of(pod_spec(render(none))["containers"][0])


def test_bad_values_are_rejected_by_the_schema() -> None:
    with pytest.raises(helm.HelmError, match=r"'/audit/level': value must be one of"):
        render({**SECRET, "audit": {**SECRET["audit"], "level": "loud"}})
    with pytest.raises(helm.HelmError, match=r"'/agent/wal/fsync': value must be one of"):
        render({**SECRET, "agent": {"wal": {"fsync": "sometimes"}}})
