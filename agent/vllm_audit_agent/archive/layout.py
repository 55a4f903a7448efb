"""Where an archive lives and what its objects are called.

`s3://BUCKET/PREFIX` names one record log's archive (one pod's: the chart puts the pod's name
in the prefix). Under the prefix, per sealed segment of the log, two objects:

    PREFIX/segments/<first seq>-<last seq>.jsonl     the segment's records, byte for byte, one a line
    PREFIX/checkpoints/<first seq>-<last seq>.jsonl  the records after it up to and including the
                                                     first signed checkpoint at or after its end

so the archive read in seq order and ended by the newest segment's checkpoint object verifies
on its own (the chain, the Merkle tree, the signatures) without the pod's disk. Seqs are
zero-padded to 20 digits: the keys sort in log order.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

SEGMENTS = "segments"
CHECKPOINTS = "checkpoints"
_RANGE = re.compile(r"^(\d{20})-(\d{20})\.jsonl$")


@dataclass(frozen=True)
class ArchiveLocation:
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, kind: str, first_seq: int, last_seq: int) -> str:
        return f"{self._base()}{kind}/{first_seq:020d}-{last_seq:020d}.jsonl"

    def folder(self, kind: str) -> str:
        return f"{self._base()}{kind}/"

    def _base(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""


def parse_archive_url(text: str) -> ArchiveLocation:
    """`s3://bucket[/prefix]` (no query, no fragment); the prefix loses surrounding slashes."""
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"archive {text!r} is not an s3://BUCKET[/PREFIX] URL")
    return ArchiveLocation(parts.netloc, parts.path.strip("/"))


def is_archive_url(text: str) -> bool:
    return text.strip().startswith("s3://")


def range_of(key: str) -> tuple[int, int] | None:
    """(first seq, last seq) an object's name says, None for a name not of this layout."""
    match = _RANGE.match(key.rsplit("/", 1)[-1])
    return (int(match.group(1)), int(match.group(2))) if match else None
