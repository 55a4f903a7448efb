"""The fault suite's table: each fault test adds one row (sent, acknowledged, stored,
published, lost, duplicated), printed at the end of the run and written as JSON beside the
test's temporary directory, so CI's log shows what every fault cost."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import FaultRow, format_table

_ROWS: list[FaultRow] = []


@pytest.fixture
def fault_table() -> Iterator[list[FaultRow]]:
    yield _ROWS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _ROWS:
        terminalreporter.section("fault suite: what each fault cost")
        for line in format_table(_ROWS):
            terminalreporter.write_line(line)
