"""What the fleet tests share: a real chDB store in the test's own directory."""

from tests.support.fleet_store import store  # noqa: F401 - the fixture
