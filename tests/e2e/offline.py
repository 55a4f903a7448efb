"""Runs the tests' offline driver (tests/e2e/offline_driver.py: vLLM's `LLM` with the hook) in a
process of its own and returns what it generated."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from harness.procs import PYTHON, REPO, base_env


def run_offline(model_dir: Path, tmp: Path, n: int, max_tokens: int, name: str,
                kv_blocks: int = 0, **hook_env: str) -> list[dict[str, object]]:
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
