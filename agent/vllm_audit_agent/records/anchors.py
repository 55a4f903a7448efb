"""Where `verify` gets checkpoints it trusts more than the log itself: a checkpoint file, a
witness (`GET /checkpoint/<origin>`), the Kafka checkpoint topic.

Each is a C2SP signed note whose log signature must verify with the log's public key; a
witness's cosignatures on it count towards `--require-cosignatures`.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vllm_audit_agent.records.chain import RECORD_TYPE_CHECKPOINT, RECORD_TYPE_COSIGNATURE
from vllm_audit_agent.records.note import origin_of
from vllm_audit_agent.records.tree_check import Anchor, anchor_from_note


def _anchor(text: str, source: str, public_key: Ed25519PublicKey, skip_foreign: bool
            ) -> list[Anchor]:
    """[the anchor], or [] when `skip_foreign` and it is signed by another key."""
    try:
        return [anchor_from_note(text, source, public_key)]
    except ValueError:
        if skip_foreign:
            return []
        raise


def from_files(paths: Iterable[Path], public_key: Ed25519PublicKey, skip_foreign: bool = False
               ) -> list[Anchor]:
    out = []
    for path in paths:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"anchor {path}: {exc.strerror}") from None
        out += _anchor(text, f"anchor file {path}", public_key, skip_foreign)
    return out


def from_witness(url: str, log_ids: Iterable[str], public_key: Ed25519PublicKey,
                 timeout: float = 10.0, skip_foreign: bool = False) -> list[Anchor]:
    """The newest checkpoint the witness at `url` cosigned for each log (none: not known)."""
    out = []
    for log_id in log_ids:
        origin = origin_of(log_id)
        where = f"{url.rstrip('/')}/checkpoint/{urllib.parse.quote(origin, safe='')}"
        try:
            with urllib.request.urlopen(where, timeout=timeout) as answer:
                text = answer.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                continue  # the witness never saw this log
            raise ConnectionError(f"witness {url}: HTTP {exc.code} for {origin}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ConnectionError(f"witness {url} cannot be reached: {exc}") from None
        out += _anchor(text, f"witness {url}", public_key, skip_foreign)
    return out


def from_checkpoint_records(payloads: Iterable[bytes], public_key: Ed25519PublicKey,
                            source: str, skip_foreign: bool = False,
                            log_ids: Iterable[str] | None = None) -> list[Anchor]:
    """The newest checkpoint per log among records (the Kafka checkpoint topic), preferring a
    cosigned copy of it; only of `log_ids` when given (a topic holds a whole fleet's)."""
    wanted = set(log_ids) if log_ids is not None else None
    newest: dict[str, tuple[int, str]] = {}
    for payload in payloads:
        try:
            record = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if record.get("type") not in (RECORD_TYPE_CHECKPOINT, RECORD_TYPE_COSIGNATURE):
            continue
        log_id, size, text = record.get("log_id"), record.get("tree_size"), record.get("note")
        if not (log_id and isinstance(size, int) and isinstance(text, str)):
            continue
        if wanted is not None and log_id not in wanted:
            continue
        held = newest.get(log_id)
        if held is None or size > held[0] or (size == held[0] and len(text) > len(held[1])):
            newest[log_id] = (size, text)
    return [a for _, text in newest.values()
            for a in _anchor(text, source, public_key, skip_foreign)]
