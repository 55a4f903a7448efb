"""What the detections tests share: the fleet's real chDB store (the fleet-wide rules)."""

from tests.support.fleet_store import store  # noqa: F401 - the fixture
