"""The archive's S3 client: locked uploads that a retry can repeat, listings and reads.

Every object is written once, under Object Lock in compliance mode until `retention_days` after
the upload: nobody, the bucket's owner included, can delete or overwrite that version or
shorten its retention before then (the S3 server answers 403). The bucket must have been
created with Object Lock enabled; a bucket without it refuses the upload (counted: refused).

An upload first asks for the object (HEAD): one already there with the same SHA-256 (kept in
its metadata) is a retry of an upload whose answer was lost, and is not written again; one
with other bytes is a conflict (two logs archiving under one prefix), never overwritten.

Failures are classified into a closed set of reasons (`FAILURE_REASONS`): the uploader retries
the transient ones for as long as they last and dead-letters a segment after repeated
permanent ones.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from vllm_audit_agent.archive.layout import ArchiveLocation, range_of

#: Why an archive call failed: the server could not be reached (or timed out), it failed (5xx,
#: throttling), it refused (4xx: credentials, permissions, a bucket without Object Lock), an
#: object with other bytes is already there, or the segment could not be read from the disk.
FAILURE_REASONS = ("unreachable", "server_error", "refused", "conflict", "unreadable")
#: Reasons a retry will not cure by waiting: after repeated ones the segment is dead-lettered.
PERMANENT_REASONS = frozenset({"refused", "conflict"})
LOCK_MODE = "COMPLIANCE"
DIGEST_KEY = "sha256"


class ArchiveError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def s3_client(endpoint: str | None = None, timeout: float = 10.0) -> Any:
    """A boto3 S3 client; credentials and region from boto3's own chain (AWS_* variables, a
    profile, the pod's role). One attempt per call: the uploader does the retrying."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=timeout, read_timeout=timeout,
                    retries={"max_attempts": 1, "mode": "standard"},
                    # S3-compatible servers (SeaweedFS, MinIO, Ceph) are addressed by path.
                    s3={"addressing_style": "path" if endpoint else "auto"})
    return boto3.client("s3", endpoint_url=endpoint or None, config=config)


def classify(exc: BaseException) -> ArchiveError:
    """The archive failure an S3 client's exception is."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, ArchiveError):
        return exc
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(exc.response.get("Error", {}).get("Code", ""))
        transient = status >= 500 or status == 429 or code in ("SlowDown", "Throttling",
                                                                 "RequestTimeout")
        return ArchiveError("server_error" if transient else "refused",
                            f"{code or status}: {exc}")
    if isinstance(exc, NoCredentialsError):
        return ArchiveError("refused", str(exc))
    if isinstance(exc, BotoCoreError | OSError):
        return ArchiveError("unreachable", str(exc))
    return ArchiveError("server_error", repr(exc))


class S3Store:
    def __init__(self, location: ArchiveLocation, client: Any, retention_days: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.location = location
        self.client = client
        self.retention_days = retention_days
        self.clock = clock

    def put_locked(self, key: str, body: bytes) -> bool:
        """Writes `body` under a compliance-mode lock; False when it was already there (a
        retry). Raises ArchiveError."""
        digest = hashlib.sha256(body).hexdigest()
        try:
            held = self._digest_of(key)
            if held is not None:
                if held == digest:
                    return False
                raise ArchiveError("conflict", f"{key} already holds other bytes (sha256 {held})")
            until = dt.datetime.fromtimestamp(self.clock() + self.retention_days * 86400, dt.UTC)
            self.client.put_object(Bucket=self.location.bucket, Key=key, Body=body,
                                   ContentType="application/x-ndjson", Metadata={DIGEST_KEY: digest},
                                   ObjectLockMode=LOCK_MODE, ObjectLockRetainUntilDate=until)
        except Exception as exc:
            raise classify(exc) from exc
        return True

    def _digest_of(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.location.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise
        return str(head.get("Metadata", {}).get(DIGEST_KEY, ""))

    def ranges(self, kind: str) -> set[tuple[int, int]]:
        """The (first seq, last seq) of every object of `kind` (segments or checkpoints)."""
        try:
            return {r for key in self._keys(self.location.folder(kind))
                    if (r := range_of(key)) is not None}
        except Exception as exc:
            raise classify(exc) from exc

    def _keys(self, prefix: str) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                yield str(item["Key"])

    def get(self, key: str) -> bytes:
        try:
            body = self.client.get_object(Bucket=self.location.bucket, Key=key)["Body"]
            return bytes(body.read())
        except Exception as exc:
            raise classify(exc) from exc
