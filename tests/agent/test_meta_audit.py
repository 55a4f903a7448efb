"""Every query and level change is itself a record in the hash-chained record log, and
`verify` covers it: "who looked at these trails, and who switched the level" has a
tamper-evident answer. Real agent, real gRPC with the local admin token, real CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from tests.support.agent_harness import Hook, agent, control, lifecycle, query, until
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import query_pb2 as q

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


async def test_queries_and_level_changes_are_recorded_and_verified(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with agent(tmp_path) as (handle, _), Hook(handle.state.config.ingest_socket) as hook:
        for seq in range(1, 4):
            await hook.send(seq, lifecycle(f"0-0000000{seq}", pb.LIFECYCLE_PHASE_FINISHED,
                                           10**18, finish_reason="stop"))
        await until(lambda: handle.state.trails.active_count() == 0, "trails final")
        page = await query(handle).ListTrails(q.ListTrailsRequest(model="", page_size=2))
        assert len(page.trails) == 2
        await query(handle).GetTrail(q.GetTrailRequest(request_id="0-00000001"))
        # Liveness polling: a token's first probe from a host is on record, not every probe.
        await query(handle).Health(q.HealthRequest())
        await query(handle).Health(q.HealthRequest())
        await control(handle).SetAuditLevel(q.SetAuditLevelRequest(level=pb.AUDIT_LEVEL_OFF))
        assert handle.state.counters["meta_audit_records"] == 4
    out = tmp_path / "export.jsonl"
    done = await asyncio.to_thread(cli, "export", "--data-dir", str(data), "--format", "jsonl",
                                   "--output-file", str(out))
    assert done.returncode == 0, done.stderr
    access = [r for r in map(json.loads, out.read_text().splitlines()) if r["type"] == "access"]
    assert [(r["method"], r["result_count"]) for r in access] == [
        ("ListTrails", 2), ("GetTrail", 1), ("Health", 0), ("SetAuditLevel", 0)]
    listing, _, _, level = access
    assert (listing["subject"], listing["role"]) == ("local-admin", "admin")
    assert listing["request"]["page_size"] == 2 and listing["token_id"]
    token = (data / "admin.token").read_text().strip()
    assert token not in out.read_text()  # the credential itself is never recorded
    assert level["request"]["level"] == "AUDIT_LEVEL_OFF"
    # The level it replaced, and the version it became: the change is on record whole.
    assert level["result"] == {"previous_level": "AUDIT_LEVEL_SUMMARY", "version": 2}
    assert (level["status"], level["outcome"], level["transport"]) == ("OK", "ok", "grpc")
    assert level["peer"].startswith("ipv4:127.0.0.1:")
    # The access records are inside the signed chain.
    public_key = str(next(data.glob("*.pub")))
    verified = await asyncio.to_thread(cli, "verify", str(data / "records"),
                                       "--public-key", public_key)
    assert verified.returncode == 0, verified.stdout + verified.stderr
