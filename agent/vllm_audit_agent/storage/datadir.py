"""The agent's data directory: one owner at a time, readable by that owner only.

The WAL holds prompts under `capture_prompt=full`, so its directory is 0700 and its files
0600 whatever the umask, and existing ones are tightened. Two agents appending to one WAL
interleave and truncate each other's records, so the directory carries an exclusive lock
(`flock` on `<dir>/LOCK`): a second agent — another process, or another open in this one —
fails to start with a message naming the directory and the holder's pid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

DIR_MODE = 0o700
FILE_MODE = 0o600
LOCK_NAME = "LOCK"


class DataDirLocked(RuntimeError):
    """Another holder has the data directory's lock."""

    def __init__(self, directory: Path, holder: str) -> None:
        super().__init__(
            f"data directory {directory} is locked by another agent (pid {holder}, "
            f"{directory / LOCK_NAME}); run one agent per data directory")
        self.directory = directory
        self.holder = holder


def private_dir(path: Path) -> Path:
    """Creates `path` 0700, or tightens it to 0700 if it exists. Missing parents get the
    default mode (they are not ours to hide: e.g. /var/lib)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)  # mkdir's mode is masked by the umask; an old one may be 0755
    return path


def open_private(path: Path, flags: int) -> int:
    """os.open with O_CREAT, the file 0600 whatever the umask (an existing one is tightened)."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def fsync_dir(path: Path) -> None:
    """Makes a create, rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_file(path: Path, data: bytes | memoryview) -> None:
    """Replaces `path` atomically with `data` (0600): temp file, fsync, rename, directory fsync.

    A crash leaves either the old file or the new one, plus at most a `.tmp` file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class DataDirLock:
    """Exclusive lock on a data directory for as long as it is held (context manager).

    `flock` locks belong to an open file description, so a second `DataDirLock` on the same
    directory conflicts even inside one process; the kernel drops the lock when the holder
    dies, so a crashed agent never leaves a stale lock behind. The file is never unlinked
    (unlinking a lock file lets two holders lock two different inodes)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise DataDirLocked(self.directory, str(os.getpid()))
        private_dir(self.directory)
        fd = open_private(self.directory / LOCK_NAME, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirLocked(self.directory, holder) from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)  # closing releases the lock
            raise
        self._fd = fd

    def release(self) -> None:
        """Idempotent. The pid stays in the file: the next holder overwrites it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"
