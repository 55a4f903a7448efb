"""The real processes the end-to-end tests drive: the shared helpers live in harness/procs.py
(the demo and benchmarks use them too); the offline driver is the tests' own."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.procs import (  # noqa: F401 - re-exported for the tests
    MAX_MODEL_LEN,
    PYTHON,
    REPO,
    Proc,
    admin_token,
    base_env,
    free_port,
    http_ok,
    start_agent,
    start_vllm_server,
    wait_until,
)


def run_offline(model_dir: Path, tmp: Path, n: int, max_tokens: int, name: str,
                kv_blocks: int = 0, **hook_env: str) -> list[dict[str, object]]:
    import json

    log = tmp / f"offline-{name}.log"
    result_path = tmp / f"offline-{name}.json"
    env = base_env(**hook_env)
    with open(log, "wb") as err:
        out = subprocess.run(
            [PYTHON, str(REPO / "tests/e2e/offline_driver.py"), str(model_dir), str(n),
             str(max_tokens), str(result_path), str(kv_blocks)],
            env=env, stdout=err, stderr=err, cwd=REPO, timeout=300, check=False,
        )
    if out.returncode != 0:
        raise RuntimeError(f"offline driver failed ({out.returncode}):\n"
                           + log.read_bytes()[-4000:].decode(errors="replace"))
    result: list[dict[str, object]] = json.loads(result_path.read_text())
    return result
