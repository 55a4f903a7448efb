"""Every file or directory of this repository the README names exists: a path that moved
(the architecture moved many) fails here instead of sending a reader nowhere."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("agent/", "vllm_hooks/", "proto/", "scripts/", "tests/", "deploy/", "helm/", "schema/",
         "harness/", "requirements/", ".ci/")
_ROOT = "|".join(re.escape(r) for r in ROOTS)
_PATH = re.compile(r"(?<![\w/.-])((?:" + _ROOT + r")[\w./-]*[\w/])")


def named_paths(text: str) -> set[str]:
    return {m.group(1).rstrip("/.") for m in _PATH.finditer(text) if "*" not in m.group(1)}


def test_every_path_the_readme_names_exists() -> None:
    names = named_paths((REPO / "README.md").read_text())
    assert len(names) > 20  # the pattern finds them
    missing = sorted(p for p in names if not (REPO / p).exists())
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_a_moved_path_is_found() -> None:
    assert named_paths("see `agent/vllm_audit_agent/records.py` and scripts/demo.py.") == {
        "agent/vllm_audit_agent/records.py", "scripts/demo.py"}
