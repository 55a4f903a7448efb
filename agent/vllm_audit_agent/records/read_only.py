"""Reading a record log without touching it: what `export`, `verify` and the tests read a stopped
(or copied) log with."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vllm_audit_agent.records.log import CURSOR_NAME, DEAD_LETTER_NAME
from vllm_audit_agent.storage.wal import WriteAheadLog


def read_records(directory: Path) -> Iterator[bytes]:
    """Every record payload in a record log directory, oldest first, without changing it.

    The WAL's recovery may truncate or rewrite a damaged file, so the segments are copied
    to a scratch directory and opened there: readers (export, verify) never modify the log."""
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory")
    with tempfile.TemporaryDirectory(prefix="vllm-audit-read-") as scratch:
        copy = Path(scratch) / "records"
        shutil.copytree(directory, copy, ignore=shutil.ignore_patterns(
            CURSOR_NAME, CURSOR_NAME + ".tmp", DEAD_LETTER_NAME))
        wal = WriteAheadLog(copy, 1 << 62, "never")
        try:
            for _, payload in wal.replay():
                yield payload
        finally:
            wal.close()
