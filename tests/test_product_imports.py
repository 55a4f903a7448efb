"""The main job, the benchmarks and the product never import from tests/ (the review found
the demo and a benchmark did): their real parts come from harness/."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("agent", "vllm_hooks", "harness", "scripts")


def test_no_product_code_imports_from_tests() -> None:
    offenders = []
    for package in PRODUCT:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}"  # type: ignore[attr-defined]
                              for n in names if n == "tests" or n.startswith("tests.")]
    assert offenders == []
