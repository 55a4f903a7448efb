"""SHA-256 digests of a model's files (weights, tokenizer, a LoRA adapter's directory), with a
small cache so a restart does not read the weights again.

A digest covers a fixed list of files in name order: each file contributes the line
`<name>\\0<size>\\0<sha256 hex of its bytes>\\n` and the digest is the SHA-256 of those lines, so
renaming, adding or removing a file changes it as much as a changed byte does. The per-file
hashes are cached by (absolute path, size, mtime_ns) in a JSON file: a file whose size and
mtime are unchanged is not read again (a weights file replaced in place gets a new mtime).

Runs on the hook's provenance thread only, never on vLLM's threads: hashing reads every byte
(about 1 s per GB on one core, measured in the e2e test's report).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: Weights file patterns, by preference: vLLM loads safetensors when there are any.
WEIGHT_PATTERNS = (("*.safetensors",), ("*.bin", "*.pt", "*.pth"))
#: The files that make a tokenizer (HF names), whichever of them exist.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")
#: A LoRA adapter directory: its weights and its config.
ADAPTER_PATTERNS = ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json")
_CHUNK = 1 << 20
#: Entries kept in the cache file (the newest); a few models' files at most in practice.
CACHE_MAX_ENTRIES = 4096


@dataclass(frozen=True)
class Digest:
    sha256: str
    files: int
    size: int
    #: "done", "cached" (every file from the cache), "unavailable" (no such files), "error: ..."
    status: str
    ms: float


UNAVAILABLE = Digest("", 0, 0, "unavailable", 0.0)


class DigestCache:
    """Per-file SHA-256 by (path, size, mtime_ns), kept in one JSON file (written atomically;
    an unreadable one is started afresh)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, list[object]] = {}
        if path:
            with contextlib.suppress(OSError, ValueError, TypeError):
                loaded = json.loads(Path(path).read_text())
                if isinstance(loaded, dict):
                    self._entries = {k: v for k, v in loaded.items()
                                     if isinstance(v, list) and len(v) == 3}

    def get(self, file: Path, size: int, mtime_ns: int) -> str | None:
        with self._lock:
            entry = self._entries.get(str(file))
        if entry and entry[0] == size and entry[1] == mtime_ns and isinstance(entry[2], str):
            return entry[2]
        return None

    def put(self, file: Path, size: int, mtime_ns: int, sha256: str) -> None:
        with self._lock:
            self._entries.pop(str(file), None)
            self._entries[str(file)] = [size, mtime_ns, sha256]
            while len(self._entries) > CACHE_MAX_ENTRIES:
                self._entries.pop(next(iter(self._entries)))

    def save(self) -> None:
        if not self.path:
            return
        with self._lock:
            data = json.dumps(self._entries, sort_keys=True)
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".digests-")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(data)
            os.replace(tmp, target)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def weight_files(directory: Path) -> list[Path]:
    """The weights files vLLM would load from `directory`, in name order ([] when none)."""
    for patterns in WEIGHT_PATTERNS:
        found = sorted({p for pattern in patterns for p in directory.glob(pattern) if p.is_file()})
        if found:
            return found
    return []


def tokenizer_files(directory: Path) -> list[Path]:
    return [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]


def adapter_files(directory: Path) -> list[Path]:
    return [directory / name for name in ADAPTER_PATTERNS if (directory / name).is_file()]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest_files(files: list[Path], cache: DigestCache | None = None) -> Digest:
    """The digest of `files` (see the module docstring); UNAVAILABLE for an empty list."""
    if not files:
        return UNAVAILABLE
    start = time.perf_counter()
    listing = hashlib.sha256()
    total = 0
    read = 0
    try:
        for file in files:
            st = file.stat()
            cached = cache.get(file.resolve(), st.st_size, st.st_mtime_ns) if cache else None
            if cached is None:
                cached = file_sha256(file)
                read += 1
                if cache is not None:
                    cache.put(file.resolve(), st.st_size, st.st_mtime_ns, cached)
            total += st.st_size
            listing.update(f"{file.name}\0{st.st_size}\0{cached}\n".encode())
    except OSError as exc:
        return Digest("", len(files), total, f"error: {exc}"[:200], 0.0)
    ms = (time.perf_counter() - start) * 1000.0
    return Digest(listing.hexdigest(), len(files), total, "done" if read else "cached",
                  ms if read else 0.0)
