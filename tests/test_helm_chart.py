"""The Helm chart, rendered and linted by Helm's own Go SDK (helm-python-sdk, no cluster and
no helm binary) and validated against Kubernetes' schemas (kubernetes-validate) and, for the
Prometheus Operator objects, against the operator's CRD schemas (tests/data/prometheus-operator,
see SOURCE there) with unknown fields rejected as `kubectl apply --validate=strict` does."""

from __future__ import annotations

import base64
import json
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vllm_audit_agent.cli.parser import build_parser
from vllm_audit_agent.config import OPTIONS
from vllm_audit_agent.records.chain import load_private_key, load_public_key, public_pem
from vllm_audit_agent.records.identity import IDENTITY_ENV

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "vllm-audit"
CRDS = REPO / "tests" / "data" / "prometheus-operator"
#: The oldest Kubernetes the chart supports (native sidecars) and the newest schema we have.
KUBE_VERSIONS = ("1.29.0", "1.37.0")
SECRET = {"audit": {"hmacKeySecret": {"name": "audit-hmac"}}}
KAFKA = {"kafka": {"bootstrap": "kafka:9092"}}
SRE = [{"namespaceSelector": {"matchLabels": {"team": "sre"}}}]
EVERYTHING = {**SECRET,
              "agent": {**KAFKA, "wal": {"persistence": {"enabled": True, "storageClassName": "fast"}},
                        "archive": {"url": "s3://audit/eu", "endpoint": "http://s3:8333",
                                    "credentialsSecret": "audit-s3"}},
              "networkPolicy": {"queryClients": SRE, "metricsClients": SRE,
                                "vllmClients": [{"podSelector": {"matchLabels": {"app": "gateway"}}}]},
              "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
                          "prometheusRule": {"enabled": True, "labels": {"release": "kps"}}},
              "replicaCount": 2}
VALUE_SETS = (SECRET, {**SECRET, "agent": KAFKA},
              {**SECRET, "agent": {**KAFKA, "wal": {"existingClaim": "audit-wal"},
                                   "contentKeys": {"existingClaim": "audit-keys"}}}, EVERYTHING)


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = helm.Chart.load(CHART).render(values, name="llm", namespace="ml",
                                              is_install=True)
    return [doc for path, text in sorted(manifests.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def notes(values: dict[str, Any]) -> str:
    manifests = helm.Chart.load(CHART).render(values, name="llm", namespace="ml", is_install=True)
    return str(manifests["vllm-audit/templates/NOTES.txt"])


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    return found


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = workload(docs)["spec"]["template"]["spec"]
    return spec


def containers(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = pod_spec(docs)
    (agent,) = spec["initContainers"]
    (vllm,) = spec["containers"]
    return agent, vllm


def agent_args(agent: dict[str, Any]) -> Any:
    # Spelled in full as declared (config.py): argparse would also take a prefix of a flag, which
    # a new option sharing it would turn into an error.
    flags = {arg.split("=")[0] for arg in agent["args"]}
    assert flags <= {option.flag for option in OPTIONS}
    return build_parser().parse_args([*agent["command"][1:], *agent["args"]])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _strict(schema: Any) -> Any:
    """Unknown fields rejected, as the API server's strict field validation does (a CRD schema
    alone only prunes them)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))
    raise LookupError(kind)


def validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        errors = [f"{list(e.absolute_path)}: {e.message}"
                  for e in crd_validator(doc["kind"]).iter_errors(doc)]
        assert errors == [], doc["kind"]
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_chart_lints_clean_and_validates_against_kubernetes_schemas() -> None:
    for values in VALUE_SETS:
        report = helm.lint(CHART, values, strict=True)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []
        for doc in render(values):
            validate(doc)
    kinds = {d["kind"] for d in render(EVERYTHING)}
    assert kinds == {"StatefulSet", "Service", "ServiceAccount", "NetworkPolicy",
                     "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule",
                     "Secret", "ConfigMap"}  # the log's signing key, its public key


def test_crd_validation_rejects_unknown_fields() -> None:
    (monitor,) = of_kind(render(EVERYTHING), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    assert not crd_validator("ServiceMonitor").is_valid(monitor)


def test_agent_is_a_native_sidecar_sharing_the_socket_with_vllm() -> None:
    agent, vllm = containers(render(SECRET))
    assert agent["restartPolicy"] == "Always"  # started before vLLM, stopped after it
    # Every flag the chart gives the agent is one the CLI accepts, and they agree.
    args = agent_args(agent)
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
    # NVML opens the node's GPUs, but only the pod's own are exported.
    assert args.gpu == "nvml" and args.gpu_scope == "pod"
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"} in agent["env"]


def test_kafka_and_overrides_reach_the_agent() -> None:
    agent, _ = containers(render({**SECRET, "audit": {**SECRET["audit"], "level": "full"},
                                  "agent": {**KAFKA, "gpu": "none"}}))
    args = agent_args(agent)
    assert (args.kafka_bootstrap, args.kafka_topic_prefix) == ("kafka:9092", "vllm-audit")
    assert args.audit_level == "full" and args.gpu == "none"
    # No NVML visibility asked for without a GPU reader; the pod's identity always (the
    # record log's genesis names who keeps it, records/identity.py IDENTITY_ENV).
    env = {e["name"]: e for e in agent["env"]}
    assert not {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"} & set(env)
    assert {v: env[v]["valueFrom"]["fieldRef"]["fieldPath"] for v in IDENTITY_ENV.values()} == {
        "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
        "NODE_NAME": "spec.nodeName"}


def test_the_worm_archive_gets_its_flags_a_prefix_per_pod_and_credentials_from_a_secret() -> None:
    archive = {"url": "s3://audit/eu/", "endpoint": "http://s3:8333", "retentionDays": 400,
               "credentialsSecret": "audit-s3"}
    agent, _ = containers(render({**SECRET, "agent": {**KAFKA, "archive": archive}}))
    args = agent_args(agent)
    # Kubernetes expands $(POD_NAME) from the container's env: each pod its own prefix.
    assert args.archive_url == "s3://audit/eu/$(POD_NAME)"
    env = env_of(agent)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert (args.archive_endpoint, float(args.archive_retention_days)) == ("http://s3:8333", 400.0)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name] == {"secretKeyRef": {"name": "audit-s3", "key": name}}
    # Without a Secret: boto3's chain (the pod's role); without a url: no archive at all.
    agent, _ = containers(render({**SECRET, "agent": {"archive": {**archive, "credentialsSecret": ""}}}))
    assert agent_args(agent).archive_url == "s3://audit/eu/$(POD_NAME)"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env_of(agent))
    agent, _ = containers(render({**SECRET, "agent": {"archive": {**archive, "url": ""}}}))
    assert not [a for a in agent["args"] if a.startswith("--archive")]
    assert "AWS_ACCESS_KEY_ID" not in env_of(agent)
    with pytest.raises(helm.HelmError, match="archive"):
        render({**SECRET, "agent": {"archive": {**archive, "url": "https://audit/eu"}}})


def test_query_api_credentials_and_tls_come_from_secrets() -> None:
    agent, _ = containers(render(SECRET))
    args = agent_args(agent)
    # Default: the agent's own admin token; plaintext only inside the NetworkPolicy's reach.
    assert args.auth_tokens_file is None and args.tls_cert is None
    assert args.allow_insecure_remote
    docs = render({**SECRET, "agent": {"auth": {"tokensSecret": "audit-tokens",
                                                "tlsSecret": "audit-tls"}}})
    agent, _ = containers(docs)
    args = agent_args(agent)
    assert str(args.auth_tokens_file) == "/etc/vllm-audit/tokens/tokens.yaml"
    assert (str(args.tls_cert), str(args.tls_key)) == ("/etc/vllm-audit/tls/tls.crt",
                                                       "/etc/vllm-audit/tls/tls.key")
    assert not args.allow_insecure_remote
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert mounts["audit-tokens"] == "/etc/vllm-audit/tokens"
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["audit-tokens"]["secret"]["secretName"] == "audit-tokens"
    assert volumes["audit-tls"]["secret"]["secretName"] == "audit-tls"


def test_pod_runs_least_privileged_without_an_api_token() -> None:
    docs = render(SECRET)
    spec = pod_spec(docs)
    (account,) = of_kind(docs, "ServiceAccount")
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    agent, vllm = containers(docs)
    assert agent["securityContext"]["runAsNonRoot"] is True
    assert agent["securityContext"]["readOnlyRootFilesystem"] is True
    for container in (agent, vllm):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # An existing account instead of a new one.
    docs = render({**SECRET, "serviceAccount": {"create": False, "name": "ml-runner"}})
    assert of_kind(docs, "ServiceAccount") == []
    assert pod_spec(docs)["serviceAccountName"] == "ml-runner"


def test_vllm_has_probes_and_resources() -> None:
    _, vllm = containers(render(SECRET))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    assert {p["name"] for p in vllm["ports"]} == {"http"}
    assert vllm["livenessProbe"]["failureThreshold"] >= 3
    # The startup probe outlasts a model download; the liveness probe starts after it.
    startup = vllm["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    resources = vllm["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert resources["limits"]["nvidia.com/gpu"] == 1


def test_agent_flushes_within_the_pods_grace_period() -> None:
    docs = render(SECRET)
    agent, _ = containers(docs)
    grace = pod_spec(docs)["terminationGracePeriodSeconds"]
    assert agent_args(agent).shutdown_timeout < grace
    with pytest.raises(helm.HelmError, match=r"agent.shutdownTimeoutSeconds \(30\) must be below "
                                             r"terminationGracePeriodSeconds \(30\)"):
        render({**SECRET, "terminationGracePeriodSeconds": 30,
                "agent": {"shutdownTimeoutSeconds": 30}})


def volume_of(docs: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((v for v in pod_spec(docs)["volumes"] if v["name"] == name), None)


def test_without_kafka_the_wal_gets_a_claim_per_pod() -> None:
    docs = render(SECRET)
    sts = workload(docs)
    assert sts["kind"] == "StatefulSet"
    claim, _keys = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "audit-wal" and volume_of(docs, "audit-wal") is None
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain",
                                                                   "whenScaled": "Retain"}
    headless = next(s for s in of_kind(docs, "Service") if s["spec"].get("clusterIP") == "None")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    agent, _ = containers(docs)
    mount = next(m for m in agent["volumeMounts"] if m["name"] == "audit-wal")
    assert mount["mountPath"] == str(agent_args(agent).data_dir)
    assert "PersistentVolumeClaim per pod" in notes(SECRET)
    # With Kafka the WAL is a buffer: an emptyDir is enough, unless persistence is forced.
    docs = render({**SECRET, "agent": KAFKA})
    assert workload(docs)["kind"] == "Deployment"
    assert volume_of(docs, "audit-wal") == {"name": "audit-wal", "emptyDir": {"sizeLimit": "2Gi"}}
    forced = workload(render(EVERYTHING))
    assert forced["kind"] == "StatefulSet"
    assert forced["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"
    # Or an existing claim, for one replica only.
    claimed = {**SECRET, "agent": {"wal": {"existingClaim": "audit-wal"},
                                   "contentKeys": {"existingClaim": "audit-keys"}}}
    docs = render(claimed)
    assert workload(docs)["kind"] == "Deployment"
    assert volume_of(docs, "audit-wal") == {"name": "audit-wal",
                                            "persistentVolumeClaim": {"claimName": "audit-wal"}}
    with pytest.raises(helm.HelmError, match="existingClaim serves one replica only"):
        render({**claimed, "replicaCount": 2})


def test_content_keys_live_on_a_volume_of_their_own_mounted_by_the_agent_alone() -> None:
    """A copy of the data directory's volume (a backup, a snapshot) must not keep the keys that
    erasure destroys (README "Retention tiers and erasure"): the agent gets --content-key-dir
    outside its data dir, on a volume only it mounts, as long-lived as its records."""
    for values in VALUE_SETS:
        docs = render(values)
        agent, vllm = containers(docs)
        args = agent_args(agent)
        assert args.content_key_dir is not None
        assert not args.content_key_dir.is_relative_to(args.data_dir)
        (mount,) = [m for m in agent["volumeMounts"] if m["name"] == "audit-content-keys"]
        assert mount["mountPath"] == str(args.content_key_dir) and not mount.get("readOnly")
        data = next(m for m in agent["volumeMounts"] if m["name"] == "audit-wal")
        assert not Path(data["mountPath"]).is_relative_to(mount["mountPath"])
        assert "audit-content-keys" not in {m["name"] for m in vllm["volumeMounts"]}
    # Without Kafka the WAL has a claim per pod, and so do the keys: a claim of their own,
    # kept with the records' when the release goes.
    sts = workload(render(SECRET))
    claims = {c["metadata"]["name"]: c["spec"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert set(claims) == {"audit-wal", "audit-content-keys"}
    assert claims["audit-content-keys"]["resources"]["requests"]["storage"] == "1Gi"
    assert claims["audit-content-keys"]["accessModes"] == ["ReadWriteOnce"]
    assert volume_of(render(SECRET), "audit-content-keys") is None
    sized = {**SECRET, "agent": {"contentKeys": {"persistence": {"size": "5Gi",
                                                                 "storageClassName": "no-snapshots"}}}}
    claims = {c["metadata"]["name"]: c["spec"]
              for c in workload(render(sized))["spec"]["volumeClaimTemplates"]}
    assert claims["audit-content-keys"]["storageClassName"] == "no-snapshots"
    assert claims["audit-content-keys"]["resources"]["requests"]["storage"] == "5Gi"
    assert "storageClassName" not in claims["audit-wal"]
    forced = workload(render(EVERYTHING))  # Kafka, but the WAL forced onto a claim
    assert [c["metadata"]["name"] for c in forced["spec"]["volumeClaimTemplates"]] == [
        "audit-wal", "audit-content-keys"]
    # With Kafka and no claim: an emptyDir, like the WAL's.
    docs = render({**SECRET, "agent": KAFKA})
    assert volume_of(docs, "audit-content-keys") == {"name": "audit-content-keys",
                                                     "emptyDir": {"sizeLimit": "256Mi"}}
    # An existing claim, on a StatefulSet too, for one replica only.
    docs = render({**SECRET, "agent": {"contentKeys": {"existingClaim": "keys"}}})
    assert [c["metadata"]["name"] for c in workload(docs)["spec"]["volumeClaimTemplates"]] == [
        "audit-wal"]
    assert volume_of(docs, "audit-content-keys") == {"name": "audit-content-keys",
                                                     "persistentVolumeClaim": {"claimName": "keys"}}
    with pytest.raises(helm.HelmError, match=r"contentKeys\.existingClaim serves one replica only"):
        render({**SECRET, "replicaCount": 2, "agent": {"contentKeys": {"existingClaim": "keys"}}})
    # Records on an existing claim outlive the pod: the keys that open them must too.
    with pytest.raises(helm.HelmError, match=r"set agent\.contentKeys\.existingClaim too"):
        render({**SECRET, "agent": {"wal": {"existingClaim": "audit-wal"}}})
    with pytest.raises(helm.HelmError, match="at '/agent/contentKeys': additional"):
        render({**SECRET, "agent": {"contentKeys": {"persistance": {}}}})


def rule_for(policy: dict[str, Any], port: str) -> list[dict[str, Any]]:
    return [r for r in policy["spec"]["ingress"] if any(p["port"] == port for p in r["ports"])]


def test_network_policy_admits_only_the_configured_query_clients() -> None:
    docs = render(SECRET)
    (policy,) = of_kind(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= \
        workload(docs)["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # vLLM's API and the metrics: anyone by default; the query API: nobody over the network.
    assert [r.get("from") for r in rule_for(policy, "http")] == [None]
    assert [r.get("from") for r in rule_for(policy, "audit-metrics")] == [None]
    assert rule_for(policy, "audit-query") == []
    assert "admits no network client" in notes(SECRET)
    # Every port the policy names is a container port of the pod.
    agent, vllm = containers(docs)
    named = {p["name"] for c in (agent, vllm) for p in c["ports"]}
    assert {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]} <= named

    (policy,) = of_kind(render(EVERYTHING), "NetworkPolicy")
    assert [r["from"] for r in rule_for(policy, "audit-query")] == [SRE]
    assert [r["from"] for r in rule_for(policy, "audit-metrics")] == [SRE]
    assert [r["from"] for r in rule_for(policy, "http")] == [
        [{"podSelector": {"matchLabels": {"app": "gateway"}}}]]
    assert of_kind(render({**SECRET, "networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_pod_disruption_budget_covers_the_pods() -> None:
    docs = render({**SECRET, "replicaCount": 3})
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == workload(docs)["spec"]["selector"]


def test_service_monitor_and_prometheus_rule_are_optional() -> None:
    assert not {"ServiceMonitor", "PrometheusRule"} & {d["kind"] for d in render(SECRET)}
    docs = render(EVERYTHING)
    (monitor,) = of_kind(docs, "ServiceMonitor")
    (rule,) = of_kind(docs, "PrometheusRule")
    assert monitor["metadata"]["labels"]["release"] == rule["metadata"]["labels"]["release"] == "kps"
    service = next(s for s in of_kind(docs, "Service") if s["spec"].get("clusterIP") != "None")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"audit-metrics", "http"}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    # The rules are the chart's copy of the alert rules, unchanged.
    rules = yaml.safe_load((CHART / "files" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == rules["groups"]


def _object_schemas(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path or "/", schema)] if "properties" in schema else []
    # The definitions too (detections: the agent's and the fleet's refer to one).
    for key, sub in {**schema.get("properties", {}), **schema.get("definitions", {})}.items():
        found += _object_schemas(sub, f"{path}/{key}")
    return found


def test_values_schema_rejects_unknown_keys_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = [p for p, s in _object_schemas(schema) if s.get("additionalProperties") is not False]
    assert open_objects == []
    # values.yaml itself satisfies it, every key of it is declared.
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))
    for values, where in (({"replicaCont": 2}, "at '': additional properties 'replicaCont'"),
                          ({"agent": {"wal": {"fsnyc": "batch"}}}, "at '/agent/wal': additional"),
                          ({"networkPolicy": {"queryClient": SRE}}, "at '/networkPolicy': additional"),
                          ({"metrics": {"serviceMonitor": {"enable": True}}},
                           "at '/metrics/serviceMonitor': additional")):
        with pytest.raises(helm.HelmError, match=where):
            render({**SECRET, **values})


def test_missing_hmac_key_is_a_clear_error() -> None:
    with pytest.raises(helm.HelmError, match=r"audit.hmacKeySecret.name is required"):
        render({})
    # Without hashing no key is needed.
    none = {"audit": {"capture": {"prompt": "none", "output": "redact", "clientIp": "full"}}}
    assert "VLLM_AUDIT_HMAC_KEY" not in env_of(containers(render(none))[1])


def test_bad_values_are_rejected_by_the_schema() -> None:
    with pytest.raises(helm.HelmError, match=r"'/audit/level': value must be one of"):
        render({**SECRET, "audit": {**SECRET["audit"], "level": "loud"}})
    with pytest.raises(helm.HelmError, match=r"'/agent/wal/fsync': value must be one of"):
        render({**SECRET, "agent": {"wal": {"fsync": "sometimes"}}})
    with pytest.raises(helm.HelmError, match=r"'/agent/wal/persistence/enabled': value must be"):
        render({**SECRET, "agent": {"wal": {"persistence": {"enabled": "yes"}}}})


def test_identity_sources_reach_the_hook(tmp_path: Path) -> None:
    values = {"audit": {**SECRET["audit"], "identity": {
        "trustedProxies": ["10.0.0.0/8", "fd00::/8"], "userHeader": "x-auth-user",
        "keysConfigMap": {"name": "api-keys", "key": "keys.yaml"}}}}
    docs = render(values)
    for doc in docs:
        validate(doc)
    _, vllm = containers(docs)
    env = {k: v for k, v in env_of(vllm).items() if isinstance(v, str)}
    mounts = {m["name"]: m["mountPath"] for m in vllm["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["audit-identity"]["configMap"] == {"name": "api-keys"}
    assert env["VLLM_AUDIT_IDENTITY_FILE"] == mounts["audit-identity"] + "/keys.yaml"
    # The hook's own parser takes what the chart renders (the mapping file from a local copy).
    from vllm_hooks.config.settings import HookSettings

    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  - sha256: " + "ab" * 32 + "\n    user: alice\n")
    hook = HookSettings.from_env({**env, "VLLM_AUDIT_IDENTITY_FILE": str(keys)})
    assert [str(n) for n in hook.trusted_proxies] == ["10.0.0.0/8", "fd00::/8"]
    assert hook.user_header == "x-auth-user"
    assert hook.identities["ab" * 32].user == "alice"
    # Off by default: nothing rendered, nothing mounted.
    _, vllm = containers(render(SECRET))
    assert not {"VLLM_AUDIT_TRUSTED_PROXIES", "VLLM_AUDIT_USER_HEADER",
                "VLLM_AUDIT_IDENTITY_FILE"} & set(env_of(vllm))
    with pytest.raises(helm.HelmError, match="trustedProxies"):
        render({"audit": {**SECRET["audit"], "identity": {"trustedProxies": ["proxy.local"]}}})


def test_http_tls_switches_the_probes_and_the_scrape_to_https() -> None:
    auth = {"tokensSecret": "audit-tokens", "tlsSecret": "audit-tls", "httpTls": True}
    values = {**SECRET, "agent": {"auth": auth},
              "metrics": {"serviceMonitor": {"enabled": True}}}
    docs = render(values)
    for doc in docs:
        validate(doc)
    agent, _ = containers(docs)
    args = agent_args(agent)
    assert args.http_tls and str(args.tls_cert) == "/etc/vllm-audit/tls/tls.crt"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert agent[probe]["httpGet"]["scheme"] == "HTTPS"
    (monitor,) = of_kind(docs, "ServiceMonitor")
    audit = next(e for e in monitor["spec"]["endpoints"] if e["port"] == "audit-metrics")
    assert audit["scheme"] == "https"
    assert audit["tlsConfig"]["ca"]["secret"] == {"name": "audit-tls", "key": "ca.crt"}
    # Off by default: plaintext probes and scrape.
    agent, _ = containers(render(SECRET))
    assert not agent_args(agent).http_tls
    assert agent["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    with pytest.raises(helm.HelmError, match=r"httpTls needs agent\.auth\.tlsSecret"):
        render({**SECRET, "agent": {"auth": {"httpTls": True}}})


LOG_PEM = public_pem(Ed25519PrivateKey.generate().public_key()).decode()
WITNESS = {**SECRET, "witness": {"enabled": True, "logPublicKeys": [LOG_PEM]},
           "agent": {"witnesses": ["https://witness.example.org/vllm"]},
           "networkPolicy": {"witnessClients": SRE}}


def test_the_witness_runs_off_the_agents_pod_and_the_agents_offer_to_it() -> None:
    report = helm.lint(CHART, WITNESS, strict=True)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []
    docs = render(WITNESS)
    for doc in docs:
        validate(doc)
    (agent_workload,) = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                         and d["metadata"]["name"] == "llm-vllm-audit"]
    (witness,) = [d for d in docs if d["metadata"]["name"] == "llm-vllm-audit-witness"
                  and d["kind"] == "Deployment"]
    # Neither the agent's workload nor its Service selects the witness's pod.
    witness_labels = witness["spec"]["template"]["metadata"]["labels"]
    (service,) = [d for d in of_kind(docs, "Service") if d["metadata"]["name"] == "llm-vllm-audit"]
    for selector in (agent_workload["spec"]["selector"]["matchLabels"], service["spec"]["selector"]):
        assert not selector.items() <= witness_labels.items()
    (agent,) = agent_workload["spec"]["template"]["spec"]["initContainers"]
    assert agent_args(agent).witness == ["http://llm-vllm-audit-witness.ml.svc:9410",
                                           "https://witness.example.org/vllm"]
    # The witness's flags are the CLI's; its key, the log keys and its state are mounted.
    (container,) = witness["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args([*container["command"][1:], *container["args"]])
    assert args.command == "witness" and args.listen == "0.0.0.0:9410"
    assert args.name == "llm-vllm-audit-witness.ml"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(args.key.parent) == mounts["key"] and str(args.state_dir) == mounts["state"]
    # The chart's own signing key first (see the test below), then the ones given.
    release_key, log_key = args.log_public_key
    assert release_key.name == "signing.crt"
    (config,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("log-keys")]
    assert config["data"][log_key.name] == LOG_PEM
    assert witness["spec"]["replicas"] == 1 and witness["spec"]["strategy"]["type"] == "Recreate"
    # Its key: made by the chart, kept across upgrades, a key `vllm-audit witness` loads.
    (secret,) = [d for d in of_kind(docs, "Secret") if d["metadata"]["name"].endswith("witness-key")]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key_file = Path(tempfile.mkdtemp()) / "witness.key"
    key_file.write_bytes(base64.b64decode(secret["data"][args.key.name]))
    load_private_key(key_file)
    (claim,) = of_kind(docs, "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # Only the release's agents and the listed peers reach it.
    (policy,) = [d for d in of_kind(docs, "NetworkPolicy") if d["metadata"]["name"].endswith("witness")]
    peers = policy["spec"]["ingress"][0]["from"]
    assert peers[0] == {"podSelector": {"matchLabels": agent_workload["spec"]["selector"]["matchLabels"]}}
    assert peers[1:] == SRE


def test_a_witness_needs_the_log_keys_and_an_own_key_secret_is_used_as_given() -> None:
    # Given a signing key Secret of its own, the chart cannot read its public key.
    with pytest.raises(helm.HelmError, match=r"witness.logPublicKeys"):
        render({**SECRET, "witness": {"enabled": True},
                "agent": {"signingKeySecret": {"name": "audit-signing", "key": "signing.key"}}})
    with pytest.raises(helm.HelmError, match=r"'/witness/logPublicKeys/0'"):
        render({**SECRET, "witness": {"enabled": True, "logPublicKeys": ["not a key"]}})
    docs = render({**WITNESS, "witness": {**WITNESS["witness"],
                                          "keySecret": {"name": "mine", "key": "k"}}})
    assert [d for d in of_kind(docs, "Secret") if "witness" in d["metadata"]["name"]] == []
    (witness,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("witness")]
    volumes = {v["name"]: v for v in witness["spec"]["template"]["spec"]["volumes"]}
    assert volumes["key"]["secret"]["secretName"] == "mine"
    # Off by default: no witness objects, no --witness flag.
    docs = render(SECRET)
    assert not [d for d in docs if "witness" in d["metadata"]["name"]]
    assert agent_args(containers(docs)[0]).witness is None


def decoded(secret: dict[str, Any], key: str, tmp: Path) -> Path:
    path = tmp / key
    path.write_bytes(base64.b64decode(secret["data"][key]))
    return path


def test_the_signing_key_is_a_read_only_secret_outside_the_data_dir(tmp_path: Path) -> None:
    """Issue 18 item 6: a copy of the data directory must not carry the key that signs it."""
    for values in VALUE_SETS:  # every variant passes the key; none uses the data-dir default
        agent = containers(render(values))[0]
        args = agent_args(agent)
        assert args.signing_key_file is not None
        assert not args.signing_key_file.is_relative_to(args.data_dir)
    docs = render(SECRET)
    agent = containers(docs)[0]
    args = agent_args(agent)
    (mount,) = [m for m in agent["volumeMounts"]
                if args.signing_key_file.is_relative_to(m["mountPath"])]
    assert mount["readOnly"] is True and str(args.signing_key_file.parent) == mount["mountPath"]
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes[mount["name"]]["secret"] == {"secretName": "llm-vllm-audit-signing-key",
                                                "defaultMode": 0o400}
    # Made by the chart once (kept across upgrades and uninstall), a key the agent loads.
    (secret,) = [d for d in of_kind(docs, "Secret")
                 if d["metadata"]["name"] == "llm-vllm-audit-signing-key"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = load_private_key(decoded(secret, args.signing_key_file.name, tmp_path))
    # Its public key is published (a certificate of it: what Helm can derive) for verifiers.
    (public,) = [d for d in of_kind(docs, "ConfigMap")
                 if d["metadata"]["name"] == "llm-vllm-audit-signing-public-key"]
    (tmp_path / "signing.crt").write_text(public["data"]["signing.crt"])
    assert load_public_key(tmp_path / "signing.crt") == key.public_key()
    # A Secret of the operator's is mounted as given, and the chart makes none.
    docs = render({**SECRET, "agent": {"signingKeySecret": {"name": "mine", "key": "log.pem"}}})
    args = agent_args(containers(docs)[0])
    assert args.signing_key_file.name == "log.pem"
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes[mount["name"]]["secret"]["secretName"] == "mine"
    assert not [d for d in docs if "signing" in d["metadata"]["name"]]
    # The key's name is a file name: no path out of the mount.
    with pytest.raises(helm.HelmError, match=r"signingKeySecret"):
        render({**SECRET, "agent": {"signingKeySecret": {"name": "mine", "key": "../signing.key"}}})


def test_the_witness_trusts_the_chart_made_key_without_holding_it(tmp_path: Path) -> None:
    docs = render({**SECRET, "witness": {"enabled": True}})  # no logPublicKeys needed
    for doc in docs:
        validate(doc)
    (witness,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("witness")]
    spec = witness["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = build_parser().parse_args([*container["command"][1:], *container["args"]])
    (log_key,) = args.log_public_key
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    source = volumes[mounts[str(log_key.parent)]]
    assert source == {"name": source["name"],
                      "configMap": {"name": "llm-vllm-audit-signing-public-key"}}
    # Only its own key is a Secret it mounts: never the log's signing key.
    assert [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v] == \
        ["llm-vllm-audit-witness-key"]
    (secret,) = [d for d in of_kind(docs, "Secret")
                 if d["metadata"]["name"] == "llm-vllm-audit-signing-key"]
    (public,) = [d for d in of_kind(docs, "ConfigMap")
                 if d["metadata"]["name"] == "llm-vllm-audit-signing-public-key"]
    (tmp_path / log_key.name).write_text(public["data"][log_key.name])
    signing = load_private_key(decoded(secret, "signing.key", tmp_path))
    assert load_public_key(tmp_path / log_key.name) == signing.public_key()


FLEET_PEM = public_pem(Ed25519PrivateKey.generate().public_key()).decode()
FLEET = {**SECRET, "agent": KAFKA, "networkPolicy": {"fleetClients": SRE},
         "fleet": {"enabled": True, "logPublicKeys": [FLEET_PEM]}}


def fleet_objects(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs if d["metadata"]["name"].startswith("llm-vllm-audit-fleet")
            and d["kind"] != "ConfigMap"}


def fleet_args(deployment: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    from vllm_audit_agent.api.fleet_config import FLEET_API_OPTIONS
    from vllm_audit_agent.config import FLEET_OPTIONS

    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    declared = {o.flag for o in (*FLEET_OPTIONS, *FLEET_API_OPTIONS)}
    assert {arg.split("=")[0] for arg in container["args"]} <= declared  # spelled in full
    args = build_parser().parse_args([*container["command"][1:], *container["args"]])
    return args, {m["name"]: m["mountPath"] for m in container["volumeMounts"]}


def test_the_fleet_service_with_chdb_runs_one_replica_on_its_claim() -> None:
    report = helm.lint(CHART, FLEET, strict=True)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []
    docs = render(FLEET)
    for doc in docs:
        validate(doc)
    objects = fleet_objects(docs)
    assert set(objects) == {"Deployment", "Service", "NetworkPolicy", "PersistentVolumeClaim"}
    deployment = objects["Deployment"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    args, mounts = fleet_args(deployment)
    assert args.command == "fleet" and args.kafka_bootstrap == "kafka:9092"
    # chDB's store and the API's directory on the claim (kept when the release goes).
    assert args.store.startswith(mounts["data"] + "/")
    assert str(args.api_data_dir).startswith(mounts["data"] + "/")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = objects["PersistentVolumeClaim"]
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # It trusts the chart's own log key and the ones given.
    release_key, given = args.log_public_key
    assert release_key.startswith(mounts["release-log-key"] + "/")
    (config,) = [d for d in of_kind(docs, "ConfigMap")
                 if d["metadata"]["name"] == "llm-vllm-audit-fleet-log-keys"]
    assert config["data"][Path(given).name] == FLEET_PEM
    # Neither the agents' workload nor their Service selects it; its own Service does.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (agents,) = [d for d in of_kind(docs, "Service") if d["metadata"]["name"] == "llm-vllm-audit"]
    assert not agents["spec"]["selector"].items() <= labels.items()
    service = objects["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["port"] for p in service["spec"]["ports"]} == {
        int(args.query_address.rsplit(":", 1)[1]), int(args.api_http_address.rsplit(":", 1)[1]),
        int(args.http_address.rsplit(":", 1)[1])}
    # Only networkPolicy.fleetClients reach it.
    policy = objects["NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == SRE
    # Nobody listed: nobody.
    closed = fleet_objects(render({**FLEET, "networkPolicy": {}}))["NetworkPolicy"]
    assert closed["spec"]["ingress"] == []


def test_the_fleet_service_scales_on_a_clickhouse_server_from_a_secret() -> None:
    values = {**FLEET, "fleet": {**FLEET["fleet"], "replicas": 3,
                                 "clickhouseUrlSecret": {"name": "ch", "key": "url"}}}
    docs = render(values)
    for doc in docs:
        validate(doc)
    objects = fleet_objects(docs)
    assert "PersistentVolumeClaim" not in objects
    deployment = objects["Deployment"]
    assert deployment["spec"]["replicas"] == 3 and "strategy" not in deployment["spec"]
    args, _ = fleet_args(deployment)
    assert args.store is None  # from the environment: the URL holds a password
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert env_of(container)["VLLM_AUDIT_FLEET_STORE"] == {"secretKeyRef": {"name": "ch", "key": "url"}}
    # Several replicas on chDB, or a fleet without Kafka, are refused with the reason.
    with pytest.raises(helm.HelmError, match=r"chDB allows one process per data directory"):
        render({**FLEET, "fleet": {**FLEET["fleet"], "replicas": 2}})
    with pytest.raises(helm.HelmError, match=r"fleet.enabled needs agent.kafka.bootstrap"):
        render({**SECRET, "fleet": {"enabled": True}})
    # Off by default.
    assert fleet_objects(render({**SECRET, "agent": KAFKA})) == {}


def test_the_fleet_is_scraped_by_its_own_service_monitor_and_checks_the_given_witnesses() -> None:
    witness_pem = public_pem(Ed25519PrivateKey.generate().public_key()).decode()
    values = {**FLEET, "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}},
              "fleet": {**FLEET["fleet"], "witnessPublicKeys": [witness_pem],
                        "unwitnessedSeconds": 900}}
    report = helm.lint(CHART, values, strict=True)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []
    docs = render(values)
    for doc in docs:
        validate(doc)
    monitors = {m["metadata"]["name"]: m for m in of_kind(docs, "ServiceMonitor")}
    assert set(monitors) == {"llm-vllm-audit", "llm-vllm-audit-fleet"}
    fleet_monitor = monitors["llm-vllm-audit-fleet"]
    assert fleet_monitor["metadata"]["labels"]["release"] == "kps"
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    fleet_service = services["llm-vllm-audit-fleet"]
    selector = fleet_monitor["spec"]["selector"]["matchLabels"].items()
    # It selects the fleet's Service, on its metrics port, and no Service of the agents.
    assert selector <= fleet_service["metadata"]["labels"].items()
    assert not [name for name, s in services.items()
                if name != "llm-vllm-audit-fleet" and selector <= s["metadata"]["labels"].items()]
    (endpoint,) = fleet_monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in fleet_service["spec"]["ports"]}
    # The witnesses' keys are mounted and given, with the quorum and the bound.
    args, mounts = fleet_args(fleet_objects(docs)["Deployment"])
    (witness_key,) = args.witness_key
    assert witness_key.startswith(mounts["witness-keys"] + "/")
    (config,) = [d for d in of_kind(docs, "ConfigMap")
                 if d["metadata"]["name"] == "llm-vllm-audit-fleet-witness-keys"]
    assert config["data"][Path(witness_key).name] == witness_pem
    assert (args.required_cosignatures, args.unwitnessed_seconds) == (1, 900)
    # No ServiceMonitor without the switch, nor without the fleet; a quorum beyond the keys fails.
    assert "ServiceMonitor" not in fleet_objects(render(FLEET))
    assert [m["metadata"]["name"] for m in of_kind(render(EVERYTHING), "ServiceMonitor")] == [
        "llm-vllm-audit"]
    with pytest.raises(helm.HelmError, match="requiredCosignatures is more than"):
        render({**values, "fleet": {**values["fleet"], "requiredCosignatures": 2}})


# -- detections ----------------------------------------------------------------------------------
THRESHOLDS = {"max_keys": 500, "rules": {"high_call_rate": {"max_calls": 100, "window_seconds": 5},
                                         "repeated_refusals": {"enabled": False}}}


def mounted_file(container: dict[str, Any], volumes: list[dict[str, Any]], path: str
                 ) -> tuple[dict[str, Any], str]:
    """The volume a file path lies on and the file's name in it."""
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in volumes if v["name"] == mount["name"]]
    return volume, path[len(mount["mountPath"]) + 1:]


def test_detections_run_by_default_and_take_thresholds_from_a_config_map(tmp_path: Path) -> None:
    from vllm_audit_agent.detections.settings import CallRate, load_settings

    # On by default, on the documented thresholds: no rules file, no ConfigMap of its own.
    docs = render(SECRET)
    args = agent_args(containers(docs)[0])
    assert args.detections is True and args.detection_rules is None
    assert not [d for d in of_kind(docs, "ConfigMap") if "detection" in d["metadata"]["name"]]
    # Inline thresholds: a ConfigMap of the chart, mounted read-only, read by the agent's own
    # loader as the file it is; a change of them rolls the pods.
    values = {**SECRET, "agent": {"detections": {"rules": THRESHOLDS}}}
    assert helm.lint(CHART, values, strict=True)["errors"] == []
    docs = render(values)
    for doc in docs:
        validate(doc)
    agent, _ = containers(docs)
    path = str(agent_args(agent).detection_rules)
    volume, key = mounted_file(agent, pod_spec(docs)["volumes"], path)
    (config,) = [d for d in of_kind(docs, "ConfigMap")
                 if d["metadata"]["name"] == volume["configMap"]["name"]]
    (tmp_path / key).write_text(config["data"][key])
    settings = load_settings(tmp_path / key)
    rate = settings.rules["high_call_rate"]
    assert isinstance(rate, CallRate) and (rate.max_calls, rate.window_seconds) == (100, 5.0)
    assert settings.max_keys == 500 and settings.rules["repeated_refusals"].enabled is False
    annotations = workload(docs)["spec"]["template"]["metadata"]["annotations"]
    changed = {**SECRET, "agent": {"detections": {"rules": {"max_keys": 501}}}}
    assert annotations["checksum/detection-rules"] != workload(render(changed))["spec"][
        "template"]["metadata"]["annotations"]["checksum/detection-rules"]
    # A ConfigMap of one's own (JSON here): mounted by name, its key as the file.
    docs = render({**SECRET, "agent": {"detections": {
        "rulesConfigMap": {"name": "soc-thresholds", "key": "rules.json"}}}})
    agent, _ = containers(docs)
    volume, key = mounted_file(agent, pod_spec(docs)["volumes"],
                               str(agent_args(agent).detection_rules))
    assert volume["configMap"] == {"name": "soc-thresholds"} and key == "rules.json"
    assert not [d for d in of_kind(docs, "ConfigMap") if "detection" in d["metadata"]["name"]]
    # Off: no rule runs, nothing is mounted.
    docs = render({**SECRET, "agent": {"detections": {"enabled": False, "rules": THRESHOLDS}}})
    agent, _ = containers(docs)
    assert agent_args(agent).detections is None  # not passed: the agent's default, off
    assert "--detection-rules" not in " ".join(agent["args"])
    assert volume_of(docs, "audit-detection-rules") is None


def test_detection_thresholds_are_checked_at_install() -> None:
    # A rule or a setting the agent does not know fails the install, not the pod's start.
    for rules, where in (({"rules": {"high_call_rte": {}}}, "/agent/detections/rules/rules"),
                         ({"rules": {"high_call_rate": {"max_cals": 1}}},
                          "/agent/detections/rules/rules/high_call_rate"),
                         ({"rules": {"output_length_anomaly": {"severity": "urgent"}}},
                          "/agent/detections/rules/rules/output_length_anomaly/severity"),
                         ({"max_keys": 0}, "/agent/detections/rules/max_keys")):
        with pytest.raises(helm.HelmError, match=where):
            render({**SECRET, "agent": {"detections": {"rules": rules}}})
    with pytest.raises(helm.HelmError, match=r"agent\.detections: give rules or rulesConfigMap"):
        render({**SECRET, "agent": {"detections": {
            "rules": THRESHOLDS, "rulesConfigMap": {"name": "soc-thresholds"}}}})


def test_the_values_schema_names_every_detection_rule_and_setting() -> None:
    """The schema's rules are the engine's (detections/settings.py), setting for setting."""
    import dataclasses

    from vllm_audit_agent.detections.settings import _KINDS

    schema = json.loads((CHART / "values.schema.json").read_text())
    rules = schema["definitions"]["detections"]["properties"]["rules"]["properties"]["rules"]
    assert {name: set(rule["properties"]) for name, rule in rules["properties"].items()} == {
        name: {f.name for f in dataclasses.fields(kind)} for name, kind in _KINDS.items()}
    for where in ("agent", "fleet"):
        assert schema["properties"][where]["properties"]["detections"] == {
            "$ref": "#/definitions/detections"}


def test_the_fleet_runs_the_rules_fleet_wide_with_its_own_thresholds(tmp_path: Path) -> None:
    from vllm_audit_agent.detections.settings import load_settings

    args, _ = fleet_args(fleet_objects(render(FLEET))["Deployment"])
    assert args.detections is True and args.detection_rules is None
    values = {**FLEET, "fleet": {**FLEET["fleet"], "detections": {"rules": THRESHOLDS}}}
    docs = render(values)
    for doc in docs:
        validate(doc)
    deployment = fleet_objects(docs)["Deployment"]
    args, _ = fleet_args(deployment)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    volume, key = mounted_file(container, deployment["spec"]["template"]["spec"]["volumes"],
                               str(args.detection_rules))
    (config,) = [d for d in of_kind(docs, "ConfigMap")
                 if d["metadata"]["name"] == volume["configMap"]["name"]]
    assert config["metadata"]["name"] == "llm-vllm-audit-fleet-detection-rules"
    (tmp_path / key).write_text(config["data"][key])
    assert load_settings(tmp_path / key).max_keys == 500
    # The agents' thresholds are theirs: no rules file for them.
    agents = [d for d in docs if d["kind"] != "Deployment" or d is not deployment]
    assert agent_args(containers(agents)[0]).detection_rules is None
    off = {**FLEET, "fleet": {**FLEET["fleet"], "detections": {"enabled": False}}}
    assert fleet_args(fleet_objects(render(off))["Deployment"])[0].detections is None
