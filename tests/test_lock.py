"""The install is the lock: current against pyproject.toml, installed exactly, shown in the README."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK_SCRIPT = REPO / "scripts" / "lock.py"


def run_lock(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LOCK_SCRIPT), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def locked(lock: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / lock).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


def test_locks_are_current() -> None:
    result = run_lock("check")
    assert result.returncode == 0, result.stderr


def test_a_stale_lock_fails_with_the_command_that_fixes_it(tmp_path: Path) -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    bumped = pyproject.replace('"aiokafka>=0.12"', '"aiokafka>=0.13"')
    assert bumped != pyproject
    (tmp_path / "pyproject.toml").write_text(bumped)
    result = run_lock("check", "--pyproject", str(tmp_path / "pyproject.toml"))
    assert result.returncode == 1
    assert "requirements/agent.txt is stale" in result.stderr
    assert "run `make lock`" in result.stderr


def test_every_locked_package_is_installed_at_its_pin() -> None:
    wrong = {}
    for name, version in locked("test.txt").items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"(locked, installed) differ; run `make install`: {wrong}"


def test_excluded_cuda_builds_are_not_locked() -> None:
    for lock in ("test.txt", "vllm.txt"):
        assert not {"torchvision", "torchaudio", "torchcodec"} & locked(lock).keys()
        assert locked(lock)["torch"].endswith("+cpu")


def test_images_install_from_the_lock() -> None:
    for dockerfile, lock in (("agent.Dockerfile", "agent.txt"), ("vllm-cpu.Dockerfile", "vllm.txt"),
                             ("fleet.Dockerfile", "fleet.txt")):
        text = (REPO / "deploy" / dockerfile).read_text()
        assert f"--require-hashes -r requirements/{lock}" in text, dockerfile
        assert "--no-deps" in text, dockerfile


def test_readme_shows_the_locked_versions() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- tested-versions:begin", 1)[1].split("-->", 1)[1]
    table = table.split("<!-- tested-versions:end -->", 1)[0].strip()
    assert table == run_lock("matrix").stdout.strip(), "README's table is stale: run `make lock`"
    assert f"| {locked('test.txt')['vllm-cpu']} |" in table
