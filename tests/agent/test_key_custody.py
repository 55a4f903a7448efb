"""Key custody (issue 18 item 6): a signing key inside the data directory lets whoever copies
the directory rewrite the log and re-sign it. A real agent says so at start in one WARNING
line and exports vllm_audit_signing_key_in_data_dir for an alert; a key kept elsewhere (made by
`vllm-audit keygen`) is 0 and no warning."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.test_metrics import get
from tests.support.agent_harness import agent
from vllm_audit_agent.cli.main import main
from vllm_audit_agent.records.chain import (
    PRIVATE_KEY_NAME,
    key_id,
    load_private_key,
    load_public_key,
    raw_public_key,
)
from vllm_audit_agent.records.read_only import read_records

GAUGE = "vllm_audit_signing_key_in_data_dir"


async def run_agent(tmp: Path, caplog: pytest.LogCaptureFixture, **overrides: object
                    ) -> tuple[float, list[str]]:
    """(the gauge a real agent exports, the WARNING lines it logged about its key)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vllm_audit"):
        async with agent(tmp, **overrides) as (handle, _):
            _, body = await get(handle)
    (family,) = [f for f in text_string_to_metric_families(body.decode()) if f.name == GAUGE]
    (sample,) = family.samples
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "signing key" in r.getMessage()]
    return sample.value, warnings


def keygen(key: Path, public: Path) -> str:
    assert main(["keygen", "--key", str(key), "--public-key", str(public)]) == 0
    return key_id(load_public_key(public))


async def test_the_default_key_in_the_data_dir_is_warned_about_and_exported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    value, warnings = await run_agent(tmp_path, caplog)
    assert value == 1
    (line,) = warnings  # one line, naming the key, the directory and the risk
    key = tmp_path / "data" / PRIVATE_KEY_NAME
    assert str(key) in line and f"data directory {tmp_path / 'data'}" in line
    assert "rewrite the log and re-sign it" in line and "--signing-key-file" in line
    assert key.exists()
    # The next start loads the key it made: still inside, still warned.
    assert await run_agent(tmp_path, caplog) == (1, warnings)


async def test_a_configured_key_inside_the_data_dir_counts_as_inside(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inside = tmp_path / "data" / "keys" / "log.key"
    keygen(inside, tmp_path / "log.pub")
    value, warnings = await run_agent(tmp_path, caplog, signing_key_file=inside)
    assert value == 1 and len(warnings) == 1 and str(inside) in warnings[0]
    # Through a symbolic link from elsewhere too: it is the file that matters.
    link = tmp_path / "elsewhere.key"
    link.symlink_to(inside)
    value, warnings = await run_agent(tmp_path, caplog, signing_key_file=link)
    assert value == 1 and len(warnings) == 1


async def test_a_key_kept_apart_is_0_and_not_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = tmp_path / "keys" / "signing.key"
    made = keygen(key, tmp_path / "pub" / "signing.pub")
    key.chmod(0o400)  # as a read-only mount gives it
    value, warnings = await run_agent(tmp_path, caplog, signing_key_file=key)
    assert (value, warnings) == (0, [])
    # The agent signed with that key and made none of its own in the data directory.
    assert not (tmp_path / "data" / PRIVATE_KEY_NAME).exists()
    records = [orjson.loads(p) for p in read_records(tmp_path / "data" / "records")]
    (genesis,) = [r for r in records if r["type"] == "genesis"]
    public = load_public_key(tmp_path / "pub" / "signing.pub")
    assert genesis["public_key"] == raw_public_key(public).hex()
    assert {r["key_id"] for r in records if "signature" in r} == {made}


def test_keygen_makes_the_key_once_and_keeps_it(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    key, public = tmp_path / "k" / "signing.key", tmp_path / "p" / "signing.pub"
    first = keygen(key, public)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "made the signing key" in capsys.readouterr().out
    pem = key.read_bytes()
    public.unlink()  # a run at every start keeps the key and puts its public key back
    assert keygen(key, public) == first and key.read_bytes() == pem
    assert "kept the signing key" in capsys.readouterr().out
    # Without --public-key it goes beside the key.
    assert main(["keygen", "--key", str(tmp_path / "solo.key")]) == 0
    assert load_public_key(tmp_path / "solo.key.pub") == \
        load_private_key(tmp_path / "solo.key").public_key()
    # A file that is not a key is refused in one line, not replaced.
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"nonsense")
    assert main(["keygen", "--key", str(bad)]) == 2
    assert bad.read_bytes() == b"nonsense" and os.path.getsize(bad) == 8
