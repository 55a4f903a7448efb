"""The content key store: one AES-256 key per (data subject, period), kept apart from the log.

A request record whose prompt or output was captured readable (policy full or redact) carries
them encrypted under its subject's key of the period the record falls in (content.py); the
chain covers the ciphertext. Destroying keys is how content ends while the records stay
verifiable: all keys of a period once it is older than the content retention (expiry), all
keys of one subject on request (erasure). A destroyed key is gone from this directory; a
tombstone says when and why, so a reader can tell "erased" from "never had a key".

Layout of the directory (`--content-key-dir`; its own volume in production, see README):

    subject.key                  32 random bytes: the HMAC key subjects are named under
    <period_end_ms>/<key_id>.key JSON {key_id, subject, period_end_ms, created_ms, key}
    tombstones.jsonl             {"key_id", "cause", "time_ms"} per key erased on request
    expired_before_ms            every key whose period ended before this is destroyed

Files are created 0600 (never widened) and synced with their directory before a record that
needs them is written; destroying overwrites a key file with zeros, syncs, unlinks and syncs
the directory. (On a copy-on-write or journaling file system, or an SSD, the old blocks may
survive the overwrite: the README says which placements make destruction real.)

The subject is the pair (tenant, user); it is stored only as an HMAC under `subject.key`, so
the key files do not list who the users are.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from vllm_audit_agent.storage.datadir import fsync_dir, write_private_file

logger = logging.getLogger("vllm_audit.agent")

SUBJECT_KEY_NAME = "subject.key"
TOMBSTONES_NAME = "tombstones.jsonl"
EXPIRED_NAME = "expired_before_ms"
#: Why a key was destroyed (a tombstone's and an erasure record's `cause`).
CAUSE_REQUEST = "request"
CAUSE_EXPIRY = "expiry"


@dataclass(frozen=True, slots=True)
class ContentKey:
    key_id: str
    subject: str
    period_end_ms: int
    key: bytes


def _shred(path: Path) -> bool:
    """Overwrites a key file with zeros, syncs and unlinks it; False when it was not there."""
    try:
        with path.open("r+b") as f:
            f.write(b"\0" * max(64, f.seek(0, os.SEEK_END)))
            f.flush()
            os.fsync(f.fileno())
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class ContentKeyStore:
    """`period_ms`: how long one key of a subject serves (a day by default: the granularity
    at which content expires)."""

    def __init__(self, directory: Path, period_ms: int = 86_400_000,
                 clock: Callable[[], float] = time.time) -> None:
        if period_ms <= 0:
            raise ValueError("the content key period must be positive")
        self.directory = directory
        self.period_ms = period_ms
        self.clock = clock
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        subject_key = directory / SUBJECT_KEY_NAME
        if not subject_key.exists():
            write_private_file(subject_key, secrets.token_bytes(32))
            fsync_dir(directory)
        self._subject_key = subject_key.read_bytes()
        #: Live keys by id, and by (subject, period end).
        self._keys: dict[str, ContentKey] = {}
        self._current: dict[tuple[str, int], ContentKey] = {}
        #: Keys erased on request: key id -> cause.
        self.tombstones: dict[str, str] = {}
        self.expired_before_ms = 0
        self._load()

    @classmethod
    def open_existing(cls, directory: Path) -> ContentKeyStore:
        """A store that exists (for reading: `export --open-content`); ValueError if none."""
        if not (directory / SUBJECT_KEY_NAME).is_file():
            raise ValueError(f"{directory}: no content key store there (--content-key-dir)")
        return cls(directory)

    # -- start ----------------------------------------------------------------------------
    def _load(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            self.expired_before_ms = int((self.directory / EXPIRED_NAME).read_text().strip())
        with contextlib.suppress(FileNotFoundError):
            for line in (self.directory / TOMBSTONES_NAME).read_bytes().splitlines():
                with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                    entry = orjson.loads(line)
                    self.tombstones[str(entry["key_id"])] = str(entry["cause"])
        for path in self.directory.glob("*/*.key"):
            try:
                data = orjson.loads(path.read_bytes())
                key = ContentKey(str(data["key_id"]), str(data["subject"]),
                                 int(data["period_end_ms"]), base64.b64decode(data["key"]))
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                logger.warning("content key store: %s is unreadable; skipped", path)
                continue
            self._keys[key.key_id] = key
            self._current[(key.subject, key.period_end_ms)] = key

    # -- subjects and keys ----------------------------------------------------------------
    def subject(self, tenant: str, user: str) -> str:
        """The subject's name in key files and erasure records: HMAC-SHA256 of tenant and
        user under this store's subject key (hex)."""
        message = tenant.encode() + b"\0" + user.encode()
        return hmac.new(self._subject_key, message, hashlib.sha256).hexdigest()

    def period_end(self, time_ms: int) -> int:
        return (time_ms // self.period_ms + 1) * self.period_ms

    def key_for(self, tenant: str, user: str, time_ms: int) -> ContentKey:
        """The subject's key of the period `time_ms` falls in, created (and durable) when it
        has none yet."""
        subject = self.subject(tenant, user)
        end = self.period_end(time_ms)
        key = self._current.get((subject, end))
        if key is not None:
            return key
        key = ContentKey(secrets.token_hex(16), subject, end, secrets.token_bytes(32))
        folder = self.directory / str(end)
        new_folder = not folder.exists()
        folder.mkdir(exist_ok=True, mode=0o700)
        write_private_file(folder / f"{key.key_id}.key", orjson.dumps({
            "key_id": key.key_id, "subject": subject, "period_end_ms": end,
            "created_ms": int(self.clock() * 1000), "key": base64.b64encode(key.key).decode()}))
        if new_folder:
            fsync_dir(self.directory)
        self._keys[key.key_id] = key
        self._current[(subject, end)] = key
        return key

    def get(self, key_id: str) -> ContentKey | None:
        return self._keys.get(key_id)

    def why_gone(self, key_id: str, period_end_ms: int) -> str | None:
        """Why a key this store does not hold is gone ("request", "expiry"), None when it
        holds it or never did."""
        if key_id in self._keys:
            return None
        cause = self.tombstones.get(key_id)
        if cause is not None:
            return cause
        return CAUSE_EXPIRY if 0 < period_end_ms <= self.expired_before_ms else None

    def keys_of(self, tenant: str, user: str) -> list[ContentKey]:
        subject = self.subject(tenant, user)
        return sorted((k for k in self._keys.values() if k.subject == subject),
                      key=lambda k: k.period_end_ms)

    def live(self) -> list[ContentKey]:
        return list(self._keys.values())

    # -- destroying -----------------------------------------------------------------------
    def destroy(self, key_ids: Iterable[str], cause: str = CAUSE_REQUEST) -> int:
        """Tombstones then shreds the keys (the tombstone first: a crash between leaves a key
        marked gone that the next call or start shreds); returns how many were destroyed."""
        keys = [self._keys[k] for k in dict.fromkeys(key_ids) if k in self._keys]
        if not keys:
            return 0
        now = int(self.clock() * 1000)
        lines = b"".join(orjson.dumps({"key_id": k.key_id, "cause": cause, "time_ms": now}) + b"\n"
                         for k in keys)
        path = self.directory / TOMBSTONES_NAME
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, lines)
            os.fsync(fd)
        finally:
            os.close(fd)
        folders = set()
        for key in keys:
            folder = self.directory / str(key.period_end_ms)
            _shred(folder / f"{key.key_id}.key")
            folders.add(folder)
            self.tombstones[key.key_id] = cause
            del self._keys[key.key_id]
            self._current.pop((key.subject, key.period_end_ms), None)
        for folder in folders:
            fsync_dir(folder)
        return len(keys)

    def expire(self, before_ms: int) -> int:
        """Destroys every key whose period ended at or before `before_ms` (content retention);
        returns how many. The watermark is written first, for the same reason as a tombstone."""
        before_ms = self.period_end(before_ms) - self.period_ms  # whole periods only
        if before_ms <= self.expired_before_ms:
            return 0
        write_private_file(self.directory / EXPIRED_NAME, f"{before_ms}\n".encode())
        self.expired_before_ms = before_ms
        gone = 0
        for folder in sorted(self.directory.glob("[0-9]*")):
            if not folder.is_dir() or int(folder.name) > before_ms:
                continue
            for path in folder.glob("*.key"):
                gone += _shred(path)
            with contextlib.suppress(OSError):
                folder.rmdir()
        for key in [k for k in self._keys.values() if k.period_end_ms <= before_ms]:
            del self._keys[key.key_id]
            self._current.pop((key.subject, key.period_end_ms), None)
        fsync_dir(self.directory)
        return gone
