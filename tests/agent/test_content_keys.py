"""The content key store on a real directory: keys are 0600 files that survive a restart,
destroying one deletes its file (and tombstones it), expiry takes whole periods, and sealed
content opens while its key lives and says why once it is gone."""

from __future__ import annotations

import stat
from pathlib import Path

import orjson

from vllm_audit_agent.records.content import SCHEME, open_fields, open_payloads, seal_fields
from vllm_audit_agent.records.content_keys import ContentKeyStore


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def fields(user: str, prompt: str = "my card is 4111", policy: str = "full") -> dict[str, object]:
    return {"request_id": f"r-{user}", "tenant": "acme", "user": user, "prompt": prompt,
            "output": "noted", "capture_policy": f"prompt={policy},output={policy},client_ip=hmac"}


def test_keys_are_private_files_that_survive_a_restart(tmp_path: Path) -> None:
    keys = ContentKeyStore(tmp_path / "k", period_ms=1000, clock=Clock(10.5))
    key = keys.key_for("acme", "alice", 10_500)
    files = list((tmp_path / "k").glob("*/*.key"))
    assert [f.name for f in files] == [f"{key.key_id}.key"]
    for path in [*files, tmp_path / "k" / "subject.key"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key.period_end_ms == 11_000
    # One key per subject and period; another period or subject gets its own.
    assert keys.key_for("acme", "alice", 10_900) is key
    assert keys.key_for("acme", "alice", 11_000).key_id != key.key_id
    assert keys.key_for("acme", "bob", 10_500).key_id != key.key_id
    again = ContentKeyStore(tmp_path / "k", period_ms=1000)
    assert again.get(key.key_id) == key
    assert again.subject("acme", "alice") == keys.subject("acme", "alice")
    assert "alice" not in (files[0]).read_text()  # the subject is an HMAC


def test_destroy_deletes_the_key_file_and_says_why(tmp_path: Path) -> None:
    keys = ContentKeyStore(tmp_path, period_ms=1000, clock=Clock(5.0))
    a, b = keys.key_for("acme", "alice", 5000), keys.key_for("acme", "bob", 5000)
    path = tmp_path / str(a.period_end_ms) / f"{a.key_id}.key"
    assert keys.destroy([a.key_id, "no-such-key"]) == 1
    assert not path.exists() and keys.get(a.key_id) is None
    assert keys.why_gone(a.key_id, a.period_end_ms) == "request"
    assert keys.keys_of("acme", "alice") == [] and keys.keys_of("acme", "bob") == [b]
    reopened = ContentKeyStore(tmp_path, period_ms=1000)
    assert reopened.get(a.key_id) is None and reopened.why_gone(a.key_id, 0) == "request"
    assert keys.destroy([a.key_id]) == 0  # already gone
    # A new request of the erased subject gets a new key, never the destroyed one.
    assert keys.key_for("acme", "alice", 5000).key_id != a.key_id


def test_expiry_takes_whole_periods(tmp_path: Path) -> None:
    clock = Clock(1.0)
    keys = ContentKeyStore(tmp_path, period_ms=1000, clock=clock)
    old, new = keys.key_for("t", "u", 1500), keys.key_for("t", "u", 2500)
    assert keys.expire(2700) == 1  # only the period ending at 2000 has ended
    assert keys.get(old.key_id) is None and keys.get(new.key_id) == new
    assert not (tmp_path / "2000").exists()
    assert keys.why_gone(old.key_id, old.period_end_ms) == "expiry"
    assert ContentKeyStore(tmp_path, period_ms=1000).expired_before_ms == 2000


def test_sealed_content_opens_until_its_key_is_gone(tmp_path: Path) -> None:
    keys = ContentKeyStore(tmp_path, period_ms=86_400_000)
    record = fields("alice")
    content = seal_fields(record, keys)
    assert content is not None and content["scheme"] == SCHEME
    assert record["prompt"] == record["output"] == ""
    assert b"4111" not in orjson.dumps(record)
    opened = open_fields(record, keys)
    assert (opened["prompt"], opened["output"]) == ("my card is 4111", "noted")
    # The ciphertext is bound to its trail: moved to another one it does not open.
    moved = open_fields({**record, "request_id": "r-other"}, keys)
    assert moved["content"]["erased"] and moved["prompt"] == ""
    keys.destroy([content["key_id"]])
    gone = open_fields(record, keys)
    assert gone["content"]["erased"] and gone["content"]["erasure"] == "request"
    assert gone["prompt"] == "" and gone["content"]["ciphertext"] == ""
    [line] = list(open_payloads([orjson.dumps(record)], keys))
    assert orjson.loads(line)["content"]["erased"]


def test_hmac_and_none_policies_are_not_sealed(tmp_path: Path) -> None:
    keys = ContentKeyStore(tmp_path)
    for policy in ("hmac", "none"):
        record = fields("carol", prompt="hmac-sha256:ab", policy=policy)
        assert seal_fields(record, keys) is None and record["prompt"] == "hmac-sha256:ab"
    assert keys.keys_of("acme", "carol") == []
