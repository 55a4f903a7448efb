"""The main job: a real vLLM (CPU build) with the hook, the agent, a witness, a Kafka-protocol
broker, real structured-output requests, then the resulting trails through the CLI, a few
metrics, `verify` against the witness's cosigned checkpoint and a `prove` of one request's
record checked by scripts/check_proof.py. Stops everything it started (by pid).

    make demo        (or: .venv/bin/python scripts/demo.py)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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


def main() -> int:
    import openai

    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="vllm-audit-demo-"))
    # The CLI finds the local agent's admin token through its data dir (as on a real host).
    os.environ["VLLM_AUDIT_DATA_DIR"] = str(work / "agent-data")
    step(f"generating the tiny model (work dir {work})")
    model = make_tiny_model(REPO / ".cache" / "tiny-llama")
    stack: list[procs.Proc] = []
    with KafkaBroker() as kafka:
        print(f"Kafka-protocol broker (Tansu) on {kafka.bootstrap}")
        try:
            # The log's signing key lives outside the agent's data directory (as the chart and
            # compose mount it from a Secret): whoever holds the directory cannot re-sign.
            keys = work / "keys"
            log_key, log_pub = make_log_key(keys)
            step("starting a witness (its own key and state: it cosigns the log's checkpoints)")
            witness, witness_url = procs.start_witness(work, keys / "witness.key", [log_pub],
                                                       work / "witness-state", WITNESS_NAME)
            stack.append(witness)
            print(f"witness {WITNESS_NAME} at {witness_url}")
            step("starting the agent")
            sock = work / "ingest.sock"
            agent, query_address, metrics = procs.start_agent(
                work, sock, kafka.bootstrap, level="full",
                extra_args=["--signing-key-file", str(log_key), "--witness", witness_url,
                            "--checkpoint-interval", "2"])
            stack.append(agent)
            print(f"agent: ingest unix:{sock}, query {query_address}, metrics {metrics}/metrics")
            step("starting vLLM (CPU build) with the vllm-audit hook (~30 s)")
            server, base = procs.start_vllm_server(model, work, sock, API_KEY)
            stack.append(server)
            print(f"vLLM serving at {base}")

            step("sending structured-output chat completions (json_schema), one streaming, "
                 "and one with a wrong API key")
            client = openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)
            ids = []
            for i, user in enumerate(("alice", "bob", "carol")):
                rid = f"demo-{uuid.uuid4().hex[:12]}"
                ids.append(rid)
                kwargs = {"stream": True, "stream_options": {"include_usage": True}} if i == 1 else {}
                result = client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": f"Describe person {i}"}],
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "person", "schema": SCHEMA}},
                    max_tokens=24, temperature=0, user=user,
                    extra_headers={"X-Request-Id": rid}, **kwargs,  # type: ignore[arg-type]
                )
                if i == 1:
                    for _ in result:  # type: ignore[union-attr]
                        pass
                print(f"  {rid} ({user}) ok")
            try:
                openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)\
                    .chat.completions.create(model="tiny", max_tokens=4,
                                             messages=[{"role": "user", "content": "hi"}])
            except openai.AuthenticationError:
                print("  wrong API key -> 401 (recorded)")

            time.sleep(1.0)  # let the hooks' 20 ms batches land
            step("vllm-audit query list --output table")
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
            data = work / "agent-data"
            witness_pub = work / "witness-state" / "witness.pub"
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
            step("a few metrics from the agent's /metrics")
            with urllib.request.urlopen(metrics + "/metrics", timeout=5) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith(("vllm_audit_engine_kv", "vllm_audit_engine_num",
                                        "vllm_audit_trails_total", "vllm_audit_records_published",
                                        "vllm_audit_hook_dropped", "vllm_audit_gpu_available")):
                        print("  " + line)
        finally:
            step("stopping everything the demo started")
            for proc in reversed(stack):
                proc.stop()
    print(f"\ndemo finished in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
