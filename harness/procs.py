"""Starting and stopping the real processes the demo, the benchmarks and the end-to-end tests
drive (the agent, its witness, `vllm serve`).

Every process is started here, waited on by polling a real endpoint (bounded), and stopped by
its own pid (its process group, since vLLM spawns an engine core and workers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
#: The served model's context: room for a request long enough to be aborted mid-generation.
MAX_MODEL_LEN = 2048


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing is not up yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL (a crash): no shutdown code runs."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(10)
        self._log.close()

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VLLM_AUDIT_ENABLED", None)
    env.pop("VLLM_STRUCTURED_OUTPUT_AUDIT", None)
    # This checkout's code first (the repo for harness/, agent/ for vllm_audit_agent, proto/ for
    # the contract), so a process started from a worktree runs that worktree's code.
    roots = [str(REPO), str(REPO / "agent"), str(REPO / "proto")]
    env["PYTHONPATH"] = os.pathsep.join([*roots, env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def admin_token(tmp: Path) -> str:
    """The admin token the agent started by `start_agent(tmp, ...)` made in its data dir."""
    return (tmp / "agent-data" / "admin.token").read_text().strip()


def start_agent(tmp: Path, socket_path: Path, kafka_bootstrap: str | None,
                level: str = "full-with-allowed-sets", extra_args: Sequence[str] = (),
                **env: str) -> tuple[Proc, str, str]:
    """Starts `vllm-audit agent` (`extra_args`: more of its flags, `env`: more of its
    environment, e.g. POD_NAME for its log's identity); returns (proc, query address, metrics
    base URL)."""
    query = f"127.0.0.1:{free_port()}"
    http_port = free_port()
    args = [
        PYTHON, "-m", "vllm_audit_agent.cli", "agent",
        "--ingest-socket", str(socket_path),
        "--query-address", query,
        "--http-address", f"127.0.0.1:{http_port}",
        "--data-dir", str(tmp / "agent-data"),
        "--audit-level", level,
        "--linger-seconds", "10",
        "--gpu", "none",
    ]
    if kafka_bootstrap:
        args += ["--kafka-bootstrap", kafka_bootstrap]
    args += extra_args
    proc = Proc(args, base_env(**env), tmp / "agent.log")
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_until(lambda: proc.alive() and http_ok(base + "/readyz"), 60, "agent /readyz")
    except TimeoutError:
        proc.stop()
        raise RuntimeError("agent did not start:\n" + proc.log_tail()) from None
    return proc, query, base


def start_witness(tmp: Path, key: Path, log_public_keys: list[Path], state_dir: Path,
                  name: str = "witness.test/w1", port: int | None = None) -> tuple[Proc, str]:
    """Starts `vllm-audit witness` (its key made at the first start); returns (proc, base URL).
    The same `state_dir` and `port` start it again on what it remembered."""
    port = port or free_port()
    args = [PYTHON, "-m", "vllm_audit_agent.cli", "witness", "--key", str(key), "--create-key",
            "--state-dir", str(state_dir), "--listen", f"127.0.0.1:{port}", "--name", name,
            *(arg for path in log_public_keys for arg in ("--log-public-key", str(path)))]
    proc = Proc(args, base_env(), tmp / f"witness-{port}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.alive() and http_ok(base + "/healthz"), 30, "witness /healthz")
    except TimeoutError:
        proc.stop()
        raise RuntimeError("witness did not start:\n" + proc.log_tail()) from None
    return proc, base


def start_vllm_server(model_dir: Path, tmp: Path, agent_socket: Path, api_key: str | None,
                      hook: bool = True, extra_args: tuple[str, ...] = (),
                      start_timeout: float = 240.0, **hook_env: str) -> tuple[Proc, str]:
    """Starts `vllm serve` (CPU build) with the hook (`hook=False`: without it, neither the
    plugin nor the middleware, the baseline of a benchmark); returns (proc, base URL).
    `api_key` None: vLLM checks no key. `extra_args`: more of vLLM's arguments.
    `start_timeout`: how long it may take to answer /health (several at once take longer)."""
    port = free_port()
    # The tests read prompts back, so content is captured in full unless `hook_env` says
    # otherwise (the product's default is hmac).
    env = base_env(**{
        "VLLM_AUDIT_ENABLED": "true",
        "VLLM_AUDIT_AGENT_ADDRESS": str(agent_socket),
        "VLLM_AUDIT_CAPTURE_PROMPT": "full",
        "VLLM_AUDIT_CAPTURE_OUTPUT": "full",
        "VLLM_AUDIT_CAPTURE_CLIENT_IP": "full",
        **hook_env,
    }) if hook else base_env(**hook_env)
    args = [
        PYTHON, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", "tiny",
        "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager",
        "--gpu-memory-utilization", "0.1", "--port", str(port), "--host", "127.0.0.1",
        *(["--api-key", api_key] if api_key is not None else []),
        *(["--middleware", "vllm_hooks.middleware.AuditMiddleware"] if hook else []),
        # Its /inference/v1/abort_requests lets a test abort a request mid-generation.
        "--enable-scale-out",
        *extra_args,
    ]
    proc = Proc(args, env, tmp / f"vllm-{port}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.alive() and http_ok(base + "/health"), start_timeout,
                   "vLLM /health", 0.5)
    except TimeoutError:
        proc.stop()
        raise RuntimeError("vLLM did not start:\n" + proc.log_tail()) from None
    return proc, base


def start_fleet(tmp: Path, kafka_bootstrap: str, extra_args: Sequence[str] = ()
                ) -> tuple[Proc, str, str, str]:
    """Starts `vllm-audit fleet` with chDB in `tmp`/fleet-store and its API's directory in
    `tmp`/fleet-api (`extra_args`: more of its flags, e.g. --log-public-key); returns (proc,
    query address, API HTTP base URL, metrics base URL). Its admin token is
    `tmp`/fleet-api/admin.token."""
    query, api_port, metrics_port = f"127.0.0.1:{free_port()}", free_port(), free_port()
    args = [PYTHON, "-m", "vllm_audit_agent.cli", "fleet", "--store", str(tmp / "fleet-store"),
            "--kafka-bootstrap", kafka_bootstrap, "--http-address",
            f"127.0.0.1:{metrics_port}", "--query-address", query, "--api-http-address",
            f"127.0.0.1:{api_port}", "--api-data-dir", str(tmp / "fleet-api"), *extra_args]
    proc = Proc(args, base_env(), tmp / "fleet.log")
    metrics = f"http://127.0.0.1:{metrics_port}"
    try:
        wait_until(lambda: proc.alive() and http_ok(metrics + "/healthz")
                   and (tmp / "fleet-api" / "admin.token").exists(), 60, "fleet /healthz")
    except TimeoutError:
        proc.stop()
        raise RuntimeError("fleet did not start:\n" + proc.log_tail()) from None
    return proc, query, f"http://127.0.0.1:{api_port}", metrics
