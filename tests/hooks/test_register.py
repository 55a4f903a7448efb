"""`register()` — the vLLM plugin entry point: off by default, idempotent, never raises.

Each case runs in a fresh interpreter: registration is once per process by design.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_AUDIT_",
                                                                       "VLLM_STRUCTURED"))}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def test_disabled_by_default_patches_and_imports_nothing() -> None:
    out = run_python(
        "import sys, vllm_hooks\n"
        "vllm_hooks.register(); vllm_hooks.register()\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('vllm_hooks.', 'vllm.', 'grpc')))\n"
        "print(loaded)\n"
    )
    assert out.returncode == 0, out.stderr
    # Only the settings reader and the error counter: no adapter, no vLLM internals, no gRPC.
    assert out.stdout.strip() == str(["vllm_hooks.errors", "vllm_hooks.settings"])


def test_bad_settings_never_raise_into_vllm_and_are_counted() -> None:
    out = run_python(
        "import vllm_hooks\n"
        "from vllm_hooks.errors import ERRORS\n"
        "vllm_hooks.register(); vllm_hooks.register()\n"
        "print(ERRORS.snapshot())\n",
        VLLM_AUDIT_ENABLED="true", VLLM_AUDIT_BUFFER_EVENTS="lots",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'register': 1}"
    assert "VLLM_AUDIT_BUFFER_EVENTS='lots' is not an integer" in out.stderr
