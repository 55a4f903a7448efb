"""Reading an archive back, for `verify` and `export`: every archived segment in seq order,
then the newest one's checkpoint object (the records up to the checkpoint that signs it).

Reads straight from the object storage, never from the pod: the archive stands on its own.
"""

from __future__ import annotations

from collections.abc import Iterator

from vllm_audit_agent.archive.layout import CHECKPOINTS, SEGMENTS, parse_archive_url
from vllm_audit_agent.archive.store import S3Store, s3_client


def open_archive(url: str, endpoint: str | None = None) -> S3Store:
    """A read-only use of the archive at `s3://BUCKET/PREFIX` (credentials: boto3's chain)."""
    return S3Store(parse_archive_url(url), s3_client(endpoint), retention_days=0.0)


def archive_payloads(store: S3Store) -> Iterator[bytes]:
    """Every record of the archive, oldest first, byte for byte."""
    segments = sorted(store.ranges(SEGMENTS))
    if not segments:
        raise ValueError(f"{store.location.url}: no archived segments there")
    for span in segments:
        yield from _lines(store.get(store.location.key(SEGMENTS, *span)))
    newest = segments[-1]
    if newest in store.ranges(CHECKPOINTS):  # else verify names the unsigned tail
        yield from _lines(store.get(store.location.key(CHECKPOINTS, *newest)))


def _lines(data: bytes) -> Iterator[bytes]:
    for line in data.split(b"\n"):
        if line:
            yield line
