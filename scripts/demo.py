"""The main job: two pods — each a real vLLM (CPU build) with the hook and its own agent (its
own signing key and record log) — a witness both agents offer their checkpoints to, a
Kafka-protocol broker both publish to, and the fleet service consuming it; real
structured-output requests to both pods, then pod A's trails through the CLI, a few metrics,
`verify` against the witness's cosigned checkpoint and a `prove` of one request's record checked
by scripts/check_proof.py; then one user's requests found across both pods through the fleet
service's API, and `verify` of each log against the fleet store. Stops everything it started
(by pid).

The second pod is a second `vllm serve`, not the offline engine: the offline engine's requests
have no HTTP request, hence no user, and "one user's requests across both pods" is what the
fleet is shown doing. Both servers start at once (about 15 s more than one on 2 cores).

    make demo        (or: .venv/bin/python scripts/demo.py)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from harness import procs  # noqa: E402 - the same process helpers the tests use
from harness.kafka_broker import KafkaBroker  # noqa: E402
from harness.tiny_model import make_tiny_model  # noqa: E402

API_KEY = "demo-key"
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def cli(query_address: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "vllm_audit_agent.cli", *args[:1], "--address", query_address, *args[1:]],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )
    return out.stdout


WITNESS_NAME = "witness.demo/w1"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def make_log_key(directory: Path) -> tuple[Path, Path]:
    """The record log's Ed25519 key, made once, outside the agent's data directory."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private, public = directory / "log.key", directory / "log.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def raw_hex(public_pem: Path) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_pem.read_bytes())
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def wait_cosigned(witness_url: str, records: Path, trail_id: str, log_pub: Path,
                  timeout: float = 60.0) -> int:
    """Waits until the witness cosigned a checkpoint covering the trail's record; its size."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = run_cli("prove", str(records), "--trail-id", trail_id, "--public-key",
                       str(log_pub), "--witness-url", witness_url)
        if done.returncode == 0:
            bundle = json.loads(done.stdout)
            if f"\u2014 {WITNESS_NAME} " in bundle["checkpoint"]:
                return int(bundle["tree_size"])
        time.sleep(1.0)
    raise TimeoutError(f"the witness at {witness_url} cosigned nothing covering {trail_id} "
                       f"within {timeout:.0f} s")


PODS = ("pod-a", "pod-b")


def start_both_vllm(model: Path, work: Path, socks: dict[str, Path],
                    stack: list[procs.Proc]) -> dict[str, str]:
    """Both pods' `vllm serve` at once; each started one joins `stack` (stopped on failure)."""
    with ThreadPoolExecutor(len(PODS)) as pool:
        # Two at once on a busy machine take longer than one: a wider bound than the tests'.
        futures = {pod: pool.submit(procs.start_vllm_server, model, work / pod, socks[pod],
                                    API_KEY, start_timeout=480.0) for pod in PODS}
        bases, failed = {}, None
        for pod, future in futures.items():
            try:
                server, bases[pod] = future.result()
                stack.append(server)
            except Exception as exc:  # the other is stopped with the stack
                failed = exc
    if failed is not None:
        raise failed
    return bases


def send_requests(bases: dict[str, str]) -> tuple[list[str], list[str]]:
    """Pod A: alice, bob (streaming), carol and a wrong API key; pod B: alice and dave.
    Returns (pod A's X-Request-Ids, alice's X-Request-Ids on both pods)."""
    import openai

    plan = [("pod-a", "alice", False), ("pod-a", "bob", True), ("pod-a", "carol", False),
            ("pod-b", "alice", False), ("pod-b", "dave", True)]
    ids, alice = [], []
    for i, (pod, user, stream) in enumerate(plan):
        client = openai.OpenAI(base_url=bases[pod] + "/v1", api_key=API_KEY, max_retries=0)
        rid = f"demo-{uuid.uuid4().hex[:12]}"
        # One dict of every argument: the SDK's overloads cannot type a stream chosen at run time.
        request: dict[str, Any] = {
            "model": "tiny", "messages": [{"role": "user", "content": f"Describe person {i}"}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "person", "schema": SCHEMA}},
            "max_tokens": 24, "temperature": 0, "user": user,
            "extra_headers": {"X-Request-Id": rid}}
        if stream:
            request.update(stream=True, stream_options={"include_usage": True})
        result = client.chat.completions.create(**request)
        if stream:
            for _ in result:  # read the stream to its end
                pass
        print(f"  {pod}: {rid} ({user}{', streaming' if stream else ''}) ok")
        ids += [rid] if pod == "pod-a" else []
        alice += [rid] if user == "alice" else []
    try:
        openai.OpenAI(base_url=bases["pod-a"] + "/v1", api_key="wrong", max_retries=0)\
            .chat.completions.create(model="tiny", max_tokens=4,
                                     messages=[{"role": "user", "content": "hi"}])
    except openai.AuthenticationError:
        print("  pod-a: wrong API key -> 401 (recorded)")
    return ids, alice


def fleet_metrics(base: str) -> list[str]:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text.splitlines()


def pods_of_logs(lines: list[str]) -> dict[str, str]:
    """log_id -> pod, from the fleet's per-log series (the pod its log's genesis names)."""
    out = {}
    for line in lines:
        if line.startswith("vllm_audit_fleet_log_verified_seq{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:
                                                               line.index("}")].split(","))
            out[labels["log_id"].strip('"')] = labels["pod"].strip('"')
    return out


def fleet_caught_up(metrics: str, query: str, token: Path, want: int) -> bool:
    verified = [line for line in fleet_metrics(metrics)
                if line.startswith('vllm_audit_fleet_logs{status="verified"}')]
    if not verified or float(verified[0].split()[-1]) < len(PODS):
        return False
    found = json.loads(cli(query, "query", "list", "--user", "alice", "--token-file", str(token)))
    return len(found["trails"]) >= want


def show_fleet(fleet: procs.Proc, query: str, api: str, metrics: str, work: Path,
               alice: list[str], verify_args: list[str]) -> None:
    token = work / "fleet-api" / "admin.token"
    step("the fleet service: waiting until it has stored and verified both pods' logs")
    procs.wait_until(lambda: fleet_caught_up(metrics, query, token, len(alice)), 90,
                     "the fleet to verify both logs and hold alice's requests", 0.5)
    step("vllm-audit query list --user alice --output table, against the fleet service")
    print(cli(query, "query", "list", "--user", "alice", "--output", "table",
              "--token-file", str(token)))
    step("the same user's records through the fleet's HTTP API (/api/v1/export?user=alice): "
         "one per pod")
    lines = fleet_metrics(metrics)
    pods = pods_of_logs(lines)
    request = urllib.request.Request(
        f"{api}/api/v1/export?{urllib.parse.urlencode({'user': 'alice'})}",
        headers={"Authorization": f"Bearer {token.read_text().strip()}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        records = [json.loads(line) for line in response.read().splitlines() if line]
    for r in records:
        print(f"  X-Request-Id {r.get('client_request_id')} ({r['user']}): trail "
              f"{r['trail_id']}, log {r['log_id'][:12]}… of {pods.get(r['log_id'], '?')}, "
              f"seq {r['seq']}")
    found = sorted(pods.get(r["log_id"], "?") for r in records)
    print(f"  alice's {len(records)} requests found across {', '.join(found)}")
    step("the fleet's /metrics: each log verified as it streamed, and witnessed")
    for line in lines:
        if line.startswith(("vllm_audit_fleet_logs{", "vllm_audit_fleet_log_verified_seq",
                            "vllm_audit_fleet_log_witnessed_tree_size",
                            "vllm_audit_fleet_records_stored_total")):
            print("  " + line)
    step("stopping the fleet service (chDB: one process per data directory), then "
         "vllm-audit verify --fleet-store: each log, from the fleet's store")
    fleet.stop()
    verified = run_cli("verify", "--fleet-store", str(work / "fleet-store"), *verify_args)
    for line in verified.stderr.strip().splitlines():
        print("  " + line)
    print(f"  (exit {verified.returncode})")


def main() -> int:
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="vllm-audit-demo-"))
    step(f"generating the tiny model (work dir {work})")
    model = make_tiny_model(REPO / ".cache" / "tiny-llama")
    stack: list[procs.Proc] = []
    with KafkaBroker() as kafka:
        print(f"Kafka-protocol broker (Tansu) on {kafka.bootstrap}")
        try:
            # Each log's signing key lives outside its agent's data directory (as the chart and
            # compose mount it from a Secret): whoever holds the directory cannot re-sign.
            keys = work / "keys"
            log_keys = {pod: make_log_key(keys / pod) for pod in PODS}
            log_pubs = [pub for _, pub in log_keys.values()]
            step("starting a witness (its own key and state: it cosigns both logs' checkpoints)")
            witness, witness_url = procs.start_witness(work, keys / "witness.key", log_pubs,
                                                       work / "witness-state", WITNESS_NAME)
            stack.append(witness)
            witness_pub = work / "witness-state" / "witness.pub"
            print(f"witness {WITNESS_NAME} at {witness_url}")
            step("starting two agents (pod-a, pod-b: each its own key and log, one broker)")
            socks, queries, metrics = {}, {}, {}
            for pod in PODS:
                socks[pod] = work / pod / "ingest.sock"
                socks[pod].parent.mkdir()
                agent, queries[pod], metrics[pod] = procs.start_agent(
                    work / pod, socks[pod], kafka.bootstrap, level="full",
                    extra_args=["--signing-key-file", str(log_keys[pod][0]), "--witness",
                                witness_url, "--checkpoint-interval", "2"], POD_NAME=pod)
                stack.append(agent)
                print(f"{pod} agent: ingest unix:{socks[pod]}, query {queries[pod]}, metrics "
                      f"{metrics[pod]}/metrics")
            step("starting the fleet service (chDB in-process; trusts both log keys and the "
                 "witness)")
            fleet, fleet_query, fleet_api, fleet_metrics_base = procs.start_fleet(
                work, kafka.bootstrap,
                [*(a for pub in log_pubs for a in ("--log-public-key", str(pub))),
                 "--witness-key", str(witness_pub)])
            stack.append(fleet)
            print(f"fleet: query {fleet_query}, HTTP API {fleet_api}, metrics "
                  f"{fleet_metrics_base}/metrics")
            step("starting vLLM (CPU build) with the vllm-audit hook on both pods, at once "
                 "(~45 s)")
            bases = start_both_vllm(model, work, socks, stack)
            print("vLLM serving at " + ", ".join(f"{pod} {base}" for pod, base in bases.items()))
            # The CLI finds the local agent's admin token through its data dir (as on a host).
            os.environ["VLLM_AUDIT_DATA_DIR"] = str(work / "pod-a" / "agent-data")

            step("sending structured-output chat completions (json_schema), some streaming, "
                 "and one with a wrong API key")
            ids, alice = send_requests(bases)
            time.sleep(1.0)  # let the hooks' 20 ms batches land
            show_pod_a(work, queries["pod-a"], metrics["pod-a"], ids, witness_url, witness_pub,
                       log_keys["pod-a"][1])
            show_fleet(fleet, fleet_query, fleet_api, fleet_metrics_base, work, alice,
                       [*(a for pub in log_pubs for a in ("--public-key", str(pub))),
                        "--witness-key", str(witness_pub), "--require-cosignatures", "1",
                        "--allow-unsigned-tail"])
        finally:
            step("stopping everything the demo started")
            for proc in reversed(stack):
                proc.stop()
    print(f"\ndemo finished in {time.monotonic() - t0:.1f} s")
    return 0


def show_pod_a(work: Path, query_address: str, metrics: str, ids: list[str], witness_url: str,
               witness_pub: Path, log_pub: Path) -> None:
    """Pod A's trails through the CLI, its log verified against the witness, one record
    proved offline, a few metrics."""
    step("vllm-audit query list --output table (pod-a's agent)")
    print(cli(query_address, "query", "list", "--limit", "10", "--output", "table"))
    # The trail key is the hook's own id; the client's X-Request-Id is a search field.
    step(f"vllm-audit query list --client-request-id {ids[0]}")
    found = json.loads(cli(query_address, "query", "list", "--client-request-id", ids[0]))
    trail_id = found["trails"][0]["request_id"]
    print(f"  X-Request-Id {ids[0]} -> trail {trail_id}")
    step(f"vllm-audit query get {trail_id} (summary only)")
    print(cli(query_address, "query", "get", trail_id))
    step("vllm-audit query stats")
    print(cli(query_address, "query", "stats"))
    data = work / "pod-a" / "agent-data"
    step("waiting for the witness to cosign a checkpoint covering the requests")
    covered = wait_cosigned(witness_url, data / "records", trail_id, log_pub)
    print(f"  the witness cosigned tree size {covered}")
    step("vllm-audit verify: chain, Merkle tree and log identity, against the witness")
    verified = run_cli("verify", str(data / "records"), "--public-key", str(log_pub),
                       "--witness-url", witness_url, "--witness-key", str(witness_pub),
                       "--require-cosignatures", "1", "--allow-unsigned-tail")
    report = json.loads(verified.stdout)
    print(f"  {verified.stderr.strip()} (exit {verified.returncode}); log "
          f"{report['log_id']}, tree size {report['tree_size']}, witnessed up to "
          f"{report['witnessed_size']}")
    step(f"vllm-audit prove --trail-id {trail_id}: an offline proof of its record")
    bundle = work / "proof.json"
    proved = run_cli("prove", str(data / "records"), "--trail-id", trail_id,
                     "--public-key", str(log_pub), "--witness-url", witness_url,
                     "--output-file", str(bundle))
    print(f"  {proved.stderr.strip()}")
    checked = subprocess.run(
        [sys.executable, "-I", str(REPO / "scripts" / "check_proof.py"), str(bundle),
         raw_hex(log_pub), f"{WITNESS_NAME}={raw_hex(witness_pub)}"],
        capture_output=True, text=True, timeout=60, check=False)
    print(f"  scripts/check_proof.py (nothing of vllm-audit imported): "
          f"{checked.stdout.strip()} (exit {checked.returncode})")
    step("a few metrics from pod-a's agent's /metrics")
    with urllib.request.urlopen(metrics + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(("vllm_audit_engine_kv", "vllm_audit_engine_num",
                                "vllm_audit_trails_total", "vllm_audit_records_published",
                                "vllm_audit_hook_dropped", "vllm_audit_gpu_available")):
                print("  " + line)


if __name__ == "__main__":
    sys.exit(main())
