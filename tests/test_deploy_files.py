"""docker-compose.yml (no Docker engine runs here): validated against the Compose
specification's JSON Schema and by `docker-compose config`, its wiring checked, and the real
agent started as uid 65532 on directories prepared exactly as its `audit-init` service does.

tests/data/compose-spec.json is schema/compose-spec.json of github.com/compose-spec/compose-spec
(see tests/data/compose-spec.SOURCE)."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.support.agent_harness import Hook, lifecycle
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.cli.parser import build_parser
from vllm_audit_agent.records.chain import load_private_key, load_public_key

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
SCHEMA = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text())
AGENT_UID = 65532
#: Written by the alerts/dashboard work (issue 10 item 4); compose only mounts them.
OTHERS_FILES = {"deploy/prometheus/alerts.yml", "deploy/grafana/vllm-audit.json"}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())  # merge keys resolved
    return loaded


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """source -> container path of a service's short-syntax volumes."""
    return dict(tuple(v.split(":")[:2]) for v in service.get("volumes", []))


def flags(command: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in command if a.startswith("--") and "=" in a)


def test_compose_validates_against_the_compose_specification() -> None:
    # The schema declares draft-07 (its "$schema" lacks the "#" jsonschema keys drafts by).
    assert SCHEMA["$schema"].rstrip("#") == "https://json-schema.org/draft-07/schema"
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft7Validator(SCHEMA)
    doc = compose()
    assert [e.message for e in validator.iter_errors(doc)] == []
    # The schema is strict enough to catch a misspelt key or a wrong type.
    bad = copy.deepcopy(doc)
    bad["services"]["vllm-audit-agent"]["volume"] = bad["services"]["vllm-audit-agent"].pop("volumes")
    bad["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] = 1.5
    messages = sorted(e.message for e in validator.iter_errors(bad))
    assert len(messages) == 2, messages
    assert "'volume' does not match any of the regexes: '^x-'" in messages
    assert "1.5 is not of type 'string', 'integer'" in messages


def test_docker_compose_config_accepts_every_profile() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    env = {**os.environ, "VLLM_AUDIT_HMAC_KEY": "test-key"}
    for profiles in ("", "gpu", "cpu", "cpu,fleet", "cpu,archive"):
        out = subprocess.run([binary, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=REPO,
                             env={**env, "COMPOSE_PROFILES": profiles}, capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0, (profiles, out.stderr)
    # The HMAC key is required, not defaulted.
    out = subprocess.run([binary, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=REPO,
                         env={k: v for k, v in env.items() if k != "VLLM_AUDIT_HMAC_KEY"},
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0 and "set a secret HMAC key" in out.stderr


def test_compose_wires_agent_and_vllm_through_a_shared_socket() -> None:
    doc = compose()
    services = doc["services"]
    assert {"kafka", "audit-init", "vllm-audit-agent", "vllm", "vllm-cpu", "prometheus",
            "grafana"} <= set(services)
    agent = services["vllm-audit-agent"]
    # Every flag the compose file gives the agent is one the CLI accepts.
    args = build_parser().parse_args(agent["command"][1:])
    socket_dir = str(args.ingest_socket.parent)
    assert mounts(agent)["audit-socket"] == socket_dir
    assert mounts(agent)["audit-wal"] == str(args.data_dir)
    for name in ("vllm", "vllm-cpu"):
        vllm = services[name]
        assert vllm["environment"]["VLLM_AUDIT_AGENT_ADDRESS"] == str(args.ingest_socket)
        assert mounts(vllm)["audit-socket"] == socket_dir
        assert "audit-wal" not in mounts(vllm)
        assert "--middleware=vllm_hooks.middleware.AuditMiddleware" in vllm["command"]
        assert vllm["environment"]["VLLM_AUDIT_ENABLED"] == "true"
        assert vllm["depends_on"]["vllm-audit-agent"] == {"condition": "service_healthy"}
    # One vLLM at a time: the GPU one reserves a GPU, the CPU build runs without one.
    assert services["vllm"]["profiles"] == ["gpu"] and services["vllm-cpu"]["profiles"] == ["cpu"]
    (gpu,) = services["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"] and gpu["count"] == 1
    assert "reservations" not in services["vllm-cpu"].get("deploy", {}).get("resources", {})
    # The agent starts after its directories are its own, as its own user, and has time to flush.
    assert agent["depends_on"]["audit-init"] == {"condition": "service_completed_successfully"}
    assert agent["user"] == f"{AGENT_UID}:{AGENT_UID}"
    assert mounts(services["audit-init"]) == {
        k: v for k, v in mounts(agent).items()
        if k in ("audit-socket", "audit-wal", "audit-content-keys")}
    # Content keys on a volume of their own, outside the data directory, which no other
    # service mounts (README "Retention tiers and erasure").
    assert args.content_key_dir is not None
    assert not args.content_key_dir.is_relative_to(args.data_dir)
    assert mounts(agent)["audit-content-keys"] == str(args.content_key_dir)
    assert [name for name, svc in services.items()
            if "audit-content-keys" in mounts(svc)] == ["audit-init", "vllm-audit-agent"]
    grace = int(agent["stop_grace_period"].rstrip("s"))
    assert args.shutdown_timeout < grace
    # The detection rules run, on their documented thresholds (README "Detections").
    assert args.detections is True and args.detection_rules is None
    assert set(doc["volumes"]) >= {"audit-socket", "audit-wal", "kafka-data"}


def test_the_witness_is_a_service_of_its_own_the_agent_offers_to() -> None:
    services = compose()["services"]
    agent, witness = services["vllm-audit-agent"], services["vllm-audit-witness"]
    agent_args = build_parser().parse_args(agent["command"][1:])
    args = build_parser().parse_args(witness["command"][1:])  # flags the CLI accepts
    assert args.command == "witness"
    (url,) = agent_args.witness
    assert url == f"http://vllm-audit-witness:{args.listen.rsplit(':', 1)[1]}"
    # It trusts the log's public key, read-only from the volume signing-key-init writes it
    # to; it mounts neither the agent's data nor the private key's volume. Its own key and
    # state are on its own volume, made its user's by witness-init.
    (log_key,) = args.log_public_key
    public_volume = {v: k for k, v in mounts(services["signing-key-init"]).items()}
    assert f"{public_volume[str(log_key.parent)]}:{log_key.parent}:ro" in witness["volumes"]
    assert set(mounts(witness)) == {"witness-data", public_volume[str(log_key.parent)]}
    own = mounts(witness)["witness-data"]
    assert args.key.parent == args.state_dir.parent == Path(own)
    assert mounts(services["witness-init"]) == {"witness-data": own}
    assert witness["user"] == f"{AGENT_UID}:{AGENT_UID}"
    assert witness["depends_on"]["vllm-audit-agent"] == {"condition": "service_healthy"}
    prometheus = yaml.safe_load((REPO / "deploy/compose/prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]}
    assert f"vllm-audit-witness:{args.listen.rsplit(':', 1)[1]}" in targets


def test_the_fleet_service_runs_on_its_profile_with_chdb_on_a_volume() -> None:
    """`vllm-audit fleet` (COMPOSE_PROFILES=…,fleet): flags its CLI accepts and its config
    checks, the chDB store and the API's directory on the fleet-data volume fleet-init makes
    its user's, the pods' log key read-only, the agents' broker, its own image with chDB,
    scraped by Prometheus."""
    from vllm_audit_agent.cli.run_fleet import api_config
    from vllm_audit_agent.config import FLEET_OPTIONS, FleetConfig
    from vllm_audit_agent.options import from_args

    doc = compose()
    services = doc["services"]
    fleet, init = services["vllm-audit-fleet"], services["fleet-init"]
    assert fleet["profiles"] == init["profiles"] == ["fleet"]
    args = build_parser().parse_args(fleet["command"][1:])
    assert args.command == "fleet"
    config = FleetConfig.from_env(**from_args(FLEET_OPTIONS, args))
    api = api_config(args)
    data = mounts(fleet)["fleet-data"]
    assert "fleet-data" in doc["volumes"] and mounts(init) == {"fleet-data": data}
    assert Path(config.store).parent == api.api_data_dir.parent == Path(data)
    assert f"chown {AGENT_UID}:{AGENT_UID} {data}" in init["command"][-1]
    assert fleet["user"] == f"{AGENT_UID}:{AGENT_UID}"
    # It trusts the agent's log key, from the volume signing-key-init writes it to, read-only.
    (key,) = config.log_public_keys
    public_volume = {v: k for k, v in mounts(services["signing-key-init"]).items()}
    assert f"{public_volume[str(Path(key).parent)]}:{Path(key).parent}:ro" in fleet["volumes"]
    assert set(mounts(fleet)) == {"fleet-data", public_volume[str(Path(key).parent)]}
    agent_flags = flags(services["vllm-audit-agent"]["command"])
    assert config.kafka_bootstrap == agent_flags["kafka-bootstrap"]
    # The same rules fleet-wide.
    assert config.detections is True
    assert fleet["depends_on"]["kafka"] == {"condition": "service_healthy"}
    # Its image carries chDB (the sidecar's does not): built from its own lock.
    assert fleet["build"]["dockerfile"] == "deploy/fleet.Dockerfile"
    assert "requirements/fleet.txt" in (REPO / fleet["build"]["dockerfile"]).read_text()
    port = config.http_address.rsplit(":", 1)[1]
    assert f"127.0.0.1:{port}:{port}" in fleet["ports"]
    assert f"127.0.0.1:{port}/healthz" in fleet["healthcheck"]["test"][-1]
    prometheus = yaml.safe_load((REPO / "deploy/compose/prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]}
    assert f"vllm-audit-fleet:{port}" in targets


def test_kafka_keeps_its_log_on_its_volume() -> None:
    kafka = compose()["services"]["kafka"]
    env = kafka["environment"]
    # apache/kafka's configureDefaults puts the log in /tmp/kraft-combined-logs unless told.
    assert env["KAFKA_LOG_DIRS"] == mounts(kafka)["kafka-data"] == "/var/lib/kafka/data"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller" and env["CLUSTER_ID"]
    agent_flags = flags(compose()["services"]["vllm-audit-agent"]["command"])
    assert agent_flags["kafka-bootstrap"] in env["KAFKA_ADVERTISED_LISTENERS"]


def test_prometheus_and_grafana_are_provisioned_with_the_rules_and_dashboard() -> None:
    services = compose()["services"]
    prom = mounts(services["prometheus"])
    config = yaml.safe_load((REPO / "deploy/compose/prometheus.yml").read_text())
    assert prom["./deploy/compose/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    rules_at = prom["./deploy/prometheus/alerts.yml"]
    (pattern,) = config["rule_files"]
    assert Path(rules_at).match(pattern)
    targets = {job["job_name"]: job["static_configs"][0]["targets"]
               for job in config["scrape_configs"]}
    agent_port = flags(services["vllm-audit-agent"]["command"])["http-address"].rsplit(":", 1)[1]
    assert targets["vllm-audit-agent"] == [f"vllm-audit-agent:{agent_port}"]
    assert set(targets["vllm"]) == {"vllm:8000", "vllm-cpu:8000"}

    grafana = mounts(services["grafana"])
    datasources = yaml.safe_load((REPO / "deploy/compose/grafana/datasources.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["uid"] == "prometheus"
    providers = yaml.safe_load((REPO / "deploy/compose/grafana/dashboards.yml").read_text())
    (provider,) = providers["providers"]
    dashboard_at = grafana["./deploy/grafana/vllm-audit.json"]
    assert str(Path(dashboard_at).parent) == provider["options"]["path"]
    provisioning = {v for v in grafana.values() if v.startswith("/etc/grafana/provisioning/")}
    assert len(provisioning) == 2

    # Every file the compose file mounts or builds from exists.
    sources = {s[2:] for service in services.values() for s in mounts(service) if s.startswith("./")}
    sources |= {s["build"]["dockerfile"] for s in services.values() if "build" in s}
    absent = sorted(s for s in sources if not (REPO / s).is_file())
    assert [s for s in absent if s not in OTHERS_FILES] == []
    if absent:
        pytest.skip(f"not yet in this branch (written by the alerts/dashboard work): {absent}")


# --- the agent on the compose file's volumes -------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def volumes() -> Iterator[Path]:
    """A root for Docker-like named volumes that uid 65532 can traverse (pytest's tmp_path
    parent is 0700 root)."""
    root = Path(tempfile.mkdtemp(prefix="vllm-audit-compose-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fresh_volumes(root: Path, service: dict[str, Any]) -> dict[str, Path]:
    """What Docker gives a new named volume that the image does not populate: root:root 0755."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as Docker and to start the agent as uid 65532")
    out = {}
    for name in mounts(service):
        out[name] = root / name
        out[name].mkdir(mode=0o755)
        os.chown(out[name], 0, 0)
    return out


def on_host(text: str, service: dict[str, Any], volumes: dict[str, Path]) -> str:
    """A container path of the service rewritten to the volume directory behind it."""
    for name, path in sorted(mounts(service).items(), key=lambda kv: -len(kv[1])):
        text = text.replace(path, str(volumes[name]))
    return text


def agent_command(agent: dict[str, Any], volumes: dict[str, Path]) -> tuple[list[str], str, str]:
    """The compose command with paths on the volumes and loopback ports; no Kafka (no broker
    here), no 0.0.0.0."""
    query, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    args = []
    for arg in agent["command"][1:]:
        if arg.startswith("--kafka-bootstrap="):
            continue
        if arg.startswith("--query-address="):
            arg = f"--query-address={query}"
        elif arg.startswith("--http-address="):
            arg = f"--http-address={http}"
        args.append(on_host(arg, agent, volumes))
    return [sys.executable, "-m", "vllm_audit_agent.cli", *args], query, http


def _others_can_read(path: Path) -> bool:
    return all(p.stat().st_mode & 0o005 == 0o005 for p in (path, *path.parents) if p.is_dir()) \
        and path.stat().st_mode & 0o004 != 0


def run_as_agent_user(command: list[str]) -> subprocess.Popen[str]:
    """Starts the command as uid/gid 65532 with no supplementary groups. When this interpreter
    or its packages sit where 65532 cannot read them (a Python under /root), the child keeps
    CAP_DAC_READ_SEARCH: it may read and search anything, but every write is still checked
    against 65532 (the WAL and the socket are what this test is about)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_AUDIT_")}
    env["HOME"] = "/nonexistent"
    popen: dict[str, Any] = {"cwd": REPO, "env": env, "stdout": subprocess.PIPE,
                             "stderr": subprocess.PIPE, "text": True, "start_new_session": True}
    needed = (Path(sys.executable).resolve(), Path(os.__file__), Path(grpc.__file__), REPO / "agent")
    if all(_others_can_read(p) for p in needed):
        return subprocess.Popen(command, user=AGENT_UID, group=AGENT_UID, extra_groups=[],
                                **popen)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("the interpreter is unreadable by uid 65532 and setpriv (util-linux) is absent")
    return subprocess.Popen([setpriv, f"--reuid={AGENT_UID}", f"--regid={AGENT_UID}",
                             "--clear-groups", "--inh-caps=+dac_read_search",
                             "--ambient-caps=+dac_read_search", *command], **popen)


def wait_ready(proc: subprocess.Popen[str], url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"agent exited {proc.returncode}: {proc.communicate()[1]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"agent not ready at {url} within {timeout}s")


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=10)
    return proc.returncode, err


async def send_one_batch(socket_path: Path) -> None:
    async with Hook(socket_path) as hook:
        reply = await hook.send(1, lifecycle("0-0c0ffee0", pb.LIFECYCLE_PHASE_FINISHED, 10**15,
                                             finish_reason="stop"), model="compose")
        assert reply.ack.seq == 1


def agent_volumes(root: Path, services: dict[str, Any]) -> dict[str, Path]:
    """Fresh volumes for the agent's mounts and its key's (public one included)."""
    agent, init = services["vllm-audit-agent"], services["signing-key-init"]
    return fresh_volumes(root, {"volumes": [*agent["volumes"], *init["volumes"]]})


def run_init(service: dict[str, Any], vols: dict[str, Path]) -> None:
    """A one-shot init service's own command on the host paths behind its volumes (we are
    root, as it is), with this checkout's `vllm-audit` first on PATH as in the image."""
    assert service["user"] == "0:0"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run([on_host(a, service, vols) for a in service["command"]], check=True,
                   timeout=60, env=env)


def test_agent_starts_as_its_user_on_volumes_prepared_by_audit_init(volumes: Path) -> None:
    services = compose()["services"]
    init, agent = services["audit-init"], services["vllm-audit-agent"]
    vols = agent_volumes(volumes, services)
    run_init(services["signing-key-init"], vols)
    run_init(init, vols)
    for name in mounts(init):
        assert (vols[name].stat().st_uid, vols[name].stat().st_gid) == (AGENT_UID, AGENT_UID)

    command, query, http = agent_command(agent, vols)
    proc = run_as_agent_user(command)
    try:
        wait_ready(proc, f"http://{http}/readyz")
        socket_path = Path(on_host(flags(agent["command"])["ingest-socket"], agent, vols))
        asyncio.run(send_one_batch(socket_path))
        with grpc.insecure_channel(query) as channel:  # the standard health service answers
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                               timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        code, err = stop(proc)
    assert code == 0, err
    segments = sorted(vols["audit-wal"].glob("*.wal"))
    assert segments and segments[0].stat().st_size > 0, "the batch never reached the WAL"
    assert {p.stat().st_uid for p in vols["audit-wal"].iterdir()} == {AGENT_UID}
    # It signed with the key mounted apart, and made none in its data directory.
    assert not (vols["audit-wal"] / "signing.key").exists()


def test_without_audit_init_the_agent_refuses_in_one_line(volumes: Path) -> None:
    """The failure audit-init exists for: root-owned volumes, agent as 65532."""
    services = compose()["services"]
    agent = services["vllm-audit-agent"]
    vols = agent_volumes(volumes, services)
    run_init(services["signing-key-init"], vols)  # the key is there; the data dir is root's
    command, _, _ = agent_command(agent, vols)
    proc = run_as_agent_user(command)
    code, err = stop_after_exit(proc)
    assert code == 1
    (line,) = err.splitlines()
    # EACCES creating a file, or EPERM tightening a directory it does not own: one line.
    assert line.startswith(("vllm-audit: agent cannot start: [Errno 13] Permission denied",
                            "vllm-audit: agent cannot start: [Errno 1] Operation not permitted"))


def stop_after_exit(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        return stop(proc)
    return proc.returncode, err


def test_agent_image_owns_the_directories_compose_mounts() -> None:
    """A fresh named volume takes the owner of the image's directory it is mounted on, so the
    image creating them as 65532 covers `docker run` without audit-init too."""
    dockerfile = (REPO / "deploy" / "agent.Dockerfile").read_text()
    owned = {line.split()[-1] for line in dockerfile.replace("\\\n", "\n").splitlines()
             if f"install -d -o {AGENT_UID} -g {AGENT_UID}" in line}
    assert f"USER {AGENT_UID}:{AGENT_UID}" in dockerfile
    agent = compose()["services"]["vllm-audit-agent"]
    assert owned == {mounts(agent)["audit-wal"], mounts(agent)["audit-socket"],
                     mounts(agent)["audit-content-keys"]}


def test_the_signing_key_is_made_once_apart_and_read_only_for_the_agent(volumes: Path) -> None:
    """Issue 18 item 6: the agent's data directory never holds the key that signs it."""
    services = compose()["services"]
    init, agent = services["signing-key-init"], services["vllm-audit-agent"]
    args = build_parser().parse_args(agent["command"][1:])
    # On a volume of its own, read-only in the agent, made before the agent starts; neither
    # the witness nor audit-init mounts it.
    assert args.signing_key_file is not None
    assert not args.signing_key_file.is_relative_to(args.data_dir)
    (key_volume,) = [name for name, path in mounts(agent).items()
                     if Path(path) == args.signing_key_file.parent]
    assert f"{key_volume}:{args.signing_key_file.parent}:ro" in agent["volumes"]
    assert mounts(init)[key_volume] == str(args.signing_key_file.parent)
    assert key_volume not in mounts(services["vllm-audit-witness"])
    assert key_volume not in mounts(services["audit-init"])
    assert agent["depends_on"]["signing-key-init"] == {"condition": "service_completed_successfully"}

    vols = agent_volumes(volumes, services)
    run_init(init, vols)
    run_init(services["audit-init"], vols)
    key = Path(on_host(str(args.signing_key_file), agent, vols))
    assert (key.stat().st_uid, stat.S_IMODE(key.stat().st_mode)) == (AGENT_UID, 0o400)
    pem = key.read_bytes()
    run_init(init, vols)  # every `up` runs it again: the key is made once
    assert key.read_bytes() == pem
    # The witness's trusted key is that key's public half, from the public volume.
    witness = build_parser().parse_args(services["vllm-audit-witness"]["command"][1:])
    (public,) = witness.log_public_key
    public = Path(on_host(str(public), init, vols))
    assert stat.S_IMODE(public.stat().st_mode) == 0o444
    assert load_public_key(public) == load_private_key(key).public_key()

    command, _, http = agent_command(agent, vols)
    proc = run_as_agent_user(command)
    try:
        wait_ready(proc, f"http://{http}/readyz")
        with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as response:
            body = response.read().decode()
    finally:
        code, err = stop(proc)
    assert code == 0, err
    (family,) = [f for f in text_string_to_metric_families(body)
                 if f.name == "vllm_audit_signing_key_in_data_dir"]
    assert [s.value for s in family.samples] == [0]
    assert "inside the data directory" not in err  # neither the signing key nor content keys
    assert not (vols["audit-wal"] / "signing.key").exists()


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${NAME:-default}` for the values the archive services use."""
    import re

    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1]) or m[2], value)


def test_the_archive_profile_serves_s3_only_and_gives_the_agent_its_options() -> None:
    """The WORM archive (COMPOSE_PROFILES=…,archive): SeaweedFS with only its S3 port published
    (its filer's would bypass Object Lock), a one-shot that makes the bucket, and the agent's
    archive options and AWS credentials taken from the caller's environment (empty: none)."""
    from vllm_audit_agent.config import AgentConfig, env_var

    doc = compose()
    services = doc["services"]
    s3, init, agent = services["s3"], services["archive-bucket-init"], services["vllm-audit-agent"]
    assert s3["profiles"] == init["profiles"] == ["archive"]
    assert s3["ports"] == ["127.0.0.1:8333:8333"]
    assert not any("8888" in str(port) for port in s3["ports"])
    assert "weed mini" in s3["command"][-1] and "-s3.port=8333" in s3["command"][-1]
    assert mounts(s3) == {"archive-data": "/data"} and "archive-data" in doc["volumes"]
    env = agent["environment"]
    for field in ("archive_url", "archive_endpoint"):
        assert env[env_var(field)] == f"${{{env_var(field)}:-}}"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name] == s3["environment"][name] == init["environment"][name] == f"${{{name}:-}}"
    # A profile left off must not hold the agent back (docker-compose refuses a dependency on
    # a service its profiles do not start).
    assert not set(agent["depends_on"]) & {"s3", "archive-bucket-init"}
    # Unset, the agent runs without an archive; set as the header says, with it.
    unset = {k: _interpolate(str(v), {}) for k, v in env.items()}
    assert AgentConfig.from_env(unset).archive_url is None
    caller = {"VLLM_AUDIT_ARCHIVE_URL": "s3://vllm-audit-archive/pod-0",
              "VLLM_AUDIT_ARCHIVE_ENDPOINT": "http://s3:8333"}
    config = AgentConfig.from_env({k: _interpolate(str(v), caller) for k, v in env.items()})
    assert (config.archive_url, config.archive_endpoint) == (caller["VLLM_AUDIT_ARCHIVE_URL"],
                                                             "http://s3:8333")
    bucket = _interpolate(init["environment"]["VLLM_AUDIT_ARCHIVE_BUCKET"], {})
    assert caller["VLLM_AUDIT_ARCHIVE_URL"].startswith(f"s3://{bucket}/")


def test_archive_bucket_init_makes_an_object_lock_bucket_on_a_real_seaweedfs(tmp_path: Path) -> None:
    """archive-bucket-init's own command against a real SeaweedFS (`weed mini`, as the s3
    service runs it): the bucket it makes has Object Lock, and a second run keeps it."""
    import boto3

    from harness.s3_server import S3Server, weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS's weed missing: requirements/test.txt installs it")
    init = compose()["services"]["archive-bucket-init"]
    assert init["command"][:2] == ["python", "-c"]
    code = init["command"][2]
    assert 'endpoint_url="http://s3:8333"' in code
    with S3Server(tmp_path / "s3", bucket="other") as server:
        env = {**os.environ, **server.env(), "VLLM_AUDIT_ARCHIVE_BUCKET": "audit-worm"}
        local = code.replace('"http://s3:8333"', repr(server.endpoint))
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", local], env=env, capture_output=True,
                                 text=True, timeout=120, check=False)
            assert out.returncode == 0, out.stderr
            assert "bucket audit-worm has Object Lock" in out.stdout
        client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        lock = client.get_object_lock_configuration(Bucket="audit-worm")
        assert lock["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
