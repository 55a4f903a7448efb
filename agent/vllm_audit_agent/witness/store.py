"""What a witness remembers of each log: the newest checkpoint it cosigned (size, root, the
note with its cosignature), one JSON file per log under `<state dir>/logs/`, 0600.

A file is replaced atomically (temp file, fsync, rename, directory fsync: datadir.py) before
the witness answers, so a cosignature it handed out is never forgotten by a crash. A file that
cannot be read stops the witness at start: forgetting a log would let it cosign a rollback.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

import orjson

from vllm_audit_agent.records.note import ORIGIN_PREFIX
from vllm_audit_agent.storage.datadir import private_dir, write_private_file

LOGS_DIR = "logs"
STATE_VERSION = 1
#: The log ids a witness serves: a file name of their own (`<id>.json`), no path, no dot first.
LOG_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def log_id_of(origin: str) -> str | None:
    """The log id of a `vllm-audit/<id>` origin, or None for an origin this witness does not
    serve."""
    if not origin.startswith(ORIGIN_PREFIX):
        return None
    log_id = origin[len(ORIGIN_PREFIX):]
    return log_id if LOG_ID.fullmatch(log_id) else None


@dataclass(frozen=True)
class LogState:
    origin: str
    size: int
    root: bytes
    #: The newest cosigned checkpoint as a signed note: the log's signature, then this
    #: witness's cosignature (GET /checkpoint/<origin> serves it).
    note: str
    first_seen_unix: int
    cosigned_unix: int

    def to_json(self) -> bytes:
        return orjson.dumps({
            "version": STATE_VERSION, "origin": self.origin, "size": self.size,
            "root": base64.b64encode(self.root).decode(), "note": self.note,
            "first_seen_unix": self.first_seen_unix, "cosigned_unix": self.cosigned_unix,
        }, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> LogState:
        raw = orjson.loads(data)
        if raw.get("version") != STATE_VERSION:
            raise ValueError(f"state version {raw.get('version')!r}, not {STATE_VERSION}")
        root = base64.b64decode(raw["root"], validate=True)
        if len(root) != 32 or int(raw["size"]) < 0:
            raise ValueError("a root of 32 bytes and a size >= 0 expected")
        return cls(str(raw["origin"]), int(raw["size"]), root, str(raw["note"]),
                   int(raw["first_seen_unix"]), int(raw["cosigned_unix"]))


class WitnessStore:
    def __init__(self, state_dir: Path) -> None:
        self.directory = private_dir(private_dir(state_dir) / LOGS_DIR)
        self.logs: dict[str, LogState] = {}
        for path in sorted(self.directory.glob("*.json")):
            try:
                state = LogState.from_json(path.read_bytes())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"witness state {path} is unreadable ({exc}); the witness will "
                                 "not start without the logs it cosigned: restore it from a "
                                 "backup") from None
            if log_id_of(state.origin) != path.stem:
                raise ValueError(f"witness state {path} holds origin {state.origin!r}, not its "
                                 "file name's")
            self.logs[state.origin] = state

    def get(self, origin: str) -> LogState | None:
        return self.logs.get(origin)

    def put(self, state: LogState) -> None:
        """Persists `state` (blocking: run off the loop), then remembers it."""
        log_id = log_id_of(state.origin)
        if log_id is None:
            raise ValueError(f"origin {state.origin!r} is not served")
        write_private_file(self.directory / f"{log_id}.json", state.to_json())
        self.logs[state.origin] = state
