"""Reading a record log without touching it: what `export`, `verify` and the tests read a stopped
(or copied, or live) log with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vllm_audit_agent.storage.segment_files import read_segment_files


def read_records(directory: Path) -> Iterator[bytes]:
    """Every intact record payload in a record log directory, oldest first, without changing
    it: plain segments and sealed (compressed) ones alike, read through (a sealed segment by
    its frames, never its index: see storage/sealed.py). Damage is passed over (the seq gap
    it leaves is what verify reports)."""
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory")
    for _, payload in read_segment_files(directory):
        yield payload
