"""What the fleet tests share: a real chDB store in the test's own directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vllm_audit_agent.fleet.store import FleetStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FleetStore]:
    opened = FleetStore.open(str(tmp_path / "chdb"))
    try:
        yield opened
    finally:
        opened.close()
