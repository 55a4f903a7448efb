"""The model-file digests and their cache, on real files; an admin call's arguments redacted.

A restart must not read the weights again (the cache, keyed by path, size and mtime), and a
changed file must be read again; the digest binds the file list, so a renamed or extra file
changes it. Secrets in an admin call's body or query string never reach the event.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from vllm_hooks.events.admin_parse import complete_admin_fields
from vllm_hooks.events.digests import DigestCache, digest_files, weight_files


def _model(tmp: Path) -> Path:
    d = tmp / "model"
    d.mkdir()
    (d / "model-00001.safetensors").write_bytes(os.urandom(1 << 20))
    (d / "model-00002.safetensors").write_bytes(os.urandom(1 << 16))
    (d / "pytorch_model.bin").write_bytes(b"not loaded when safetensors exist")
    return d


def test_the_digest_binds_every_file_and_its_name(tmp_path: Path) -> None:
    d = _model(tmp_path)
    files = weight_files(d)
    assert [f.name for f in files] == ["model-00001.safetensors", "model-00002.safetensors"]
    first = digest_files(files)
    lines = "".join(f"{f.name}\0{f.stat().st_size}\0"
                    f"{hashlib.sha256(f.read_bytes()).hexdigest()}\n" for f in files)
    assert first.sha256 == hashlib.sha256(lines.encode()).hexdigest()
    assert first.status == "done" and first.files == 2 and first.size == (1 << 20) + (1 << 16)
    (d / "model-00002.safetensors").rename(d / "model-00003.safetensors")
    assert digest_files(weight_files(d)).sha256 != first.sha256


def test_a_restart_reads_no_file_again_and_a_changed_file_is_read(tmp_path: Path) -> None:
    d = _model(tmp_path)
    cache_file = tmp_path / "cache" / "digests.json"
    cache = DigestCache(str(cache_file))
    first = digest_files(weight_files(d), cache)
    cache.save()
    assert first.status == "done"
    # A new process: the cache file alone answers (no byte is read: status cached, 0 ms).
    again = digest_files(weight_files(d), DigestCache(str(cache_file)))
    assert (again.sha256, again.status, again.ms) == (first.sha256, "cached", 0.0)
    # The same size, rewritten: a new mtime, so it is read again.
    target = d / "model-00002.safetensors"
    target.write_bytes(os.urandom(1 << 16))
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    changed = digest_files(weight_files(d), DigestCache(str(cache_file)))
    assert changed.status == "done" and changed.sha256 != first.sha256


def test_an_unreadable_cache_starts_afresh(tmp_path: Path) -> None:
    bad = tmp_path / "digests.json"
    bad.write_text("{not json")
    d = _model(tmp_path)
    assert digest_files(weight_files(d), DigestCache(str(bad))).status == "done"


def test_no_weights_is_unavailable_not_an_error(tmp_path: Path) -> None:
    assert digest_files(weight_files(tmp_path)).status == "unavailable"


def test_secrets_in_an_admin_call_are_redacted() -> None:
    body = json.dumps({"lora_name": "sql", "lora_path": "/m/sql", "api_key": "sk-1",
                       "update_info": {"auth_token": "t", "names": ["w"], "x-api-key": "k"},
                       "password": "p"}).encode()
    out = complete_admin_fields({"path": "/v1/load_lora_adapter"}, body, b'{"ok": true}',
                                b"token=abc&level=1")
    args = json.loads(out["arguments"])
    assert args == {"lora_name": "sql", "lora_path": "/m/sql", "api_key": "<redacted>",
                    "password": "<redacted>",
                    "update_info": {"auth_token": "<redacted>", "names": ["w"],
                                    "x-api-key": "<redacted>"}}
    assert out["query"] == "token=%3Credacted%3E&level=1"
    assert out["arguments_sha256"] == hashlib.sha256(body).hexdigest()
    assert out["arguments_bytes"] == len(body) and not out["arguments_truncated"]
    assert out["result"] == '{"ok": true}'


def test_long_admin_arguments_are_cut_and_say_so() -> None:
    body = json.dumps({"names": ["w" * 100] * 100}).encode()
    out = complete_admin_fields({}, body, b"", b"")
    assert out["arguments_truncated"] and len(out["arguments"].encode()) <= 2048
