"""A real chDB fleet store in the test's own directory, as a fixture (the fleet and the
detections tests import it)."""

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
