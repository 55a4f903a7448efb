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
    # Only the on switch's reader (start_policy, with the variables' table and its room, a
    # docstring) and the error counter: no other settings, no adapter, no vLLM internals, no gRPC.
    assert out.stdout.strip() == str(
        ["vllm_hooks.config", "vllm_hooks.config.env_vars", "vllm_hooks.config.start_policy",
         "vllm_hooks.errors"])


def test_with_fail_open_bad_settings_never_raise_into_vllm_and_are_counted() -> None:
    out = run_python(
        "import vllm_hooks\n"
        "from vllm_hooks.errors import ERRORS\n"
        "vllm_hooks.register(); vllm_hooks.register()\n"
        "print(ERRORS.snapshot())\n",
        VLLM_AUDIT_ENABLED="true", VLLM_AUDIT_BUFFER_EVENTS="lots", VLLM_AUDIT_FAIL_OPEN="true",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'register': 1}"
    assert "VLLM_AUDIT_BUFFER_EVENTS='lots' is not an integer" in out.stderr


def test_a_bad_setting_stops_start_up_naming_the_variable() -> None:
    out = run_python("import vllm_hooks\nvllm_hooks.register()\nprint('served')\n",
                     VLLM_AUDIT_ENABLED="true", VLLM_AUDIT_CAPTURE_PROMPT="everything")
    assert out.returncode != 0 and "served" not in out.stdout
    assert "AuditStartupError" in out.stderr
    assert "VLLM_AUDIT_CAPTURE_PROMPT='everything'" in out.stderr
    assert "VLLM_AUDIT_FAIL_OPEN=true" in out.stderr
    # Disabled, the same bad value is nobody's business.
    out = run_python("import vllm_hooks\nvllm_hooks.register()\nprint('served')\n",
                     VLLM_AUDIT_CAPTURE_PROMPT="everything")
    assert out.returncode == 0 and "served" in out.stdout


def test_required_refuses_start_up_when_the_agent_cannot_be_reached(tmp_path: Path) -> None:
    out = run_python("import vllm_hooks\nvllm_hooks.register()\nprint('served')\n",
                     VLLM_AUDIT_ENABLED="true", VLLM_AUDIT_REQUIRED="true",
                     VLLM_AUDIT_REQUIRED_WAIT_SECONDS="0.5",
                     VLLM_AUDIT_AGENT_ADDRESS=str(tmp_path / "absent.sock"))
    assert out.returncode != 0 and "served" not in out.stdout
    assert "VLLM_AUDIT_REQUIRED=true and the agent at" in out.stderr
    assert "absent.sock" in out.stderr


async def test_required_starts_when_the_agent_is_up(tmp_path: Path) -> None:
    import asyncio

    from tests.support.agent_harness import agent

    async with agent(tmp_path) as (handle, _):
        out = await asyncio.to_thread(
            run_python, "import vllm_hooks\nvllm_hooks.register()\nprint('served')\n",
            VLLM_AUDIT_ENABLED="true", VLLM_AUDIT_REQUIRED="true",
            VLLM_AUDIT_REQUIRED_WAIT_SECONDS="5",
            VLLM_AUDIT_AGENT_ADDRESS=str(handle.state.config.ingest_socket))
    assert out.returncode == 0, out.stderr
    assert "served" in out.stdout
