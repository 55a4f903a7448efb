"""The README's parts printed from the code (scripts/readme_tables.py): the record's schema
version from the contract, the hook's environment variables from their one declaration, and
every metric family a real agent exports. The README said `schema: 3` while records were 5."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "readme_tables.py"


def tables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)


def test_the_readme_parts_are_the_ones_printed_from_the_code() -> None:
    out = tables("--check")
    assert out.returncode == 0, out.stderr


def test_the_schema_version_is_the_contract_s() -> None:
    from vllm_audit_agent.model.record import SCHEMA_VERSION

    readme = (REPO / "README.md").read_text()
    assert re.findall(r"`schema: (\d+)`", readme) == [str(SCHEMA_VERSION)]


def test_every_hook_variable_and_every_metric_family_is_listed() -> None:
    from vllm_hooks.config import env_vars

    readme = (REPO / "README.md").read_text()
    for name, value in vars(env_vars).items():
        if name.startswith("ENV_"):
            assert f"| `{value}` |" in readme, value
    for family in ("vllm_audit_ingest_refused_batches_total", "vllm_audit_trails_total",
                   "vllm_audit_query_refused_calls_total", "DCGM_FI_DEV_GPU_UTIL"):
        assert f"| `{family}` |" in readme, family


def test_a_drifted_part_fails_the_check_naming_it(tmp_path: Path) -> None:
    current = tmp_path / "README.md"
    current.write_text((REPO / "README.md").read_text())
    assert tables("--readme", str(current)).returncode == 0  # as the code is now
    readme = current.read_text()
    current.write_text(readme.replace("`schema: ", "`schema: 3").replace(
        "| `VLLM_AUDIT_FLUSH_MS` |", "| `VLLM_AUDIT_FLUSH_MILLIS` |"))
    out = tables("--check", "--readme", str(current))
    assert out.returncode == 1
    assert "record-schema part differs" in out.stderr and "hook-variables part differs" in out.stderr
    assert "metrics part" not in out.stderr
    assert tables("--readme", str(current)).returncode == 0  # rewrites them
    assert current.read_text() == readme
