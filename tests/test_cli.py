"""`vllm-audit` as a user runs it: the real CLI in a subprocess against a real agent (in-process,
on real sockets), and the agent's start-up failures through the real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.agent_harness import Hook, agent, lifecycle
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.cli.output import PROOF_FIELDS
from vllm_audit_agent.cli.parser import build_parser, version
from vllm_audit_agent.config import OPTIONS
from vllm_audit_agent.model.record import encode
from vllm_audit_agent.records.chain import CHAIN_FIELDS
from vllm_audit_agent.server import INGEST_HEALTH, QUERY_HEALTH, AgentHandle

REPO = Path(__file__).resolve().parents[1]
ADDRESS_ENV = "VLLM_AUDIT_QUERY_ADDRESS"


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_AUDIT_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "vllm_audit_agent.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=REPO, env=full_env)


async def acli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess while this loop keeps serving the in-process agent."""
    return await asyncio.to_thread(cli, *args, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_admin(handle: AgentHandle) -> dict[str, str]:
    """How the CLI on the agent's machine finds the local admin token: the data dir."""
    return {"VLLM_AUDIT_DATA_DIR": str(handle.state.config.data_dir)}


def test_version() -> None:
    out = cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"vllm-audit {version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*|unknown", version())


async def test_client_options_go_anywhere_and_the_env_var_names_the_agent(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _):
        address = handle.query_address
        creds = local_admin(handle)
        for args, env in (
            (["--address", address, "query", "health"], None),
            (["query", "--address", address, "health"], None),
            (["query", "health", "--address", address], None),
            (["query", "health"], {ADDRESS_ENV: address}),
            (["-o", "json", "query", "health"], {ADDRESS_ENV: address}),
        ):
            out = await acli(*args, env={**creds, **(env or {})})
            assert out.returncode == 0, (args, out.stderr)
            assert json.loads(out.stdout)["status"] == "SERVING", args
        # A flag wins over the env var (which here names nothing).
        out = await acli("query", "health", "--address", address,
                         env={ADDRESS_ENV: f"127.0.0.1:{free_port()}", **creds})
        assert out.returncode == 0, out.stderr


async def test_json_output_has_the_kafka_record_shape_and_table_reads_as_one(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, published), \
            Hook(handle.state.config.ingest_socket) as hook:
        await hook.send(1, lifecycle("0-0a0b0c0d", pb.LIFECYCLE_PHASE_FINISHED, 10**15,
                                     finish_reason="stop"), model="offline-model")
        address = handle.query_address
        creds = local_admin(handle)
        out = await acli("query", "list", "--address", address, env=creds)
        assert out.returncode == 0, out.stderr
        (trail,) = json.loads(out.stdout)["trails"]
        # The request's record (the log's first record is its signed genesis).
        published_record = next(r for topic, _, r in published.records if topic == "requests")
        record = json.loads(encode(published_record))  # as the Kafka publisher sends it
        # The same keys and value types as the record on the Kafka topic, less the fields
        # that place it in the record log's chain (a trail is shown before it is recorded).
        # (log_id: which record log it is in, also given when it is recorded).
        record = {k: v for k, v in record.items() if k not in (*CHAIN_FIELDS, "log_id")}
        # A listing has no events to fill the grammar proof from: it leaves those fields out
        # (`query get ID --events` has them).
        assert set(trail) == set(record) - set(PROOF_FIELDS)
        record = {k: v for k, v in record.items() if k not in PROOF_FIELDS}
        # JSON numbers are numbers: the record log's canonical form writes 0.0 as 0.
        def kind(value: object) -> type:
            return float if type(value) is int else type(value)
        assert {k: kind(v) for k, v in trail.items()} == {k: kind(v) for k, v in record.items()}
        assert trail["created_unix_ms"] == record["created_unix_ms"] > 0  # int64: a number
        assert trail["state"] == "TRAIL_STATE_FINISHED"
        assert trail["model"] == "offline-model"

        out = await acli("query", "list", "--output", "table", "--address", address, env=creds)
        assert out.returncode == 0, out.stderr
        header, row = out.stdout.splitlines()
        assert header.split()[:3] == ["request_id", "state", "model"]
        assert row.split()[:3] == ["0-0a0b0c0d", "TRAIL_STATE_FINISHED", "offline-model"]

        out = await acli("-o", "table", "query", "stats", "--address", address, env=creds)
        assert out.returncode == 0, out.stderr
        rows = dict(line.split(None, 1) for line in out.stdout.splitlines()[1:] if " " in line)
        assert rows["batches_ingested"].strip() == "1"
        assert rows["audit_level"].strip() == "AUDIT_LEVEL_SUMMARY"

        out = await acli("query", "get", "0-0a0b0c0d", "--events", "--address", address,
                         env=creds)
        got = json.loads(out.stdout)
        assert got["summary"] == {**trail, "grammar_events": [], "grammar_events_omitted": 0}
        assert len(got["events"]) == 1
        assert got["events"][0]["time_unix_nano"] == 10**15  # a uint64, still a number


def test_every_agent_option_has_help_with_its_default_and_env_var() -> None:
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    agent_parser = commands.choices["agent"]  # type: ignore[index]
    options = [a for a in agent_parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) == len(OPTIONS)  # every declared option is a flag
    for action in options:
        assert action.help and "default" in action.help, action.option_strings
        assert action.default is None, action.option_strings  # an unset flag leaves the env var
    text = cli("agent", "--help").stdout
    # Every declared environment variable of the agent is reachable from its help.
    env_vars = {option.env for option in OPTIONS}
    flat = " ".join(text.split())
    assert sorted(v for v in env_vars if v not in flat) == []


def test_a_port_clash_at_agent_start_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag, other in (("--query-address", "--http-address"),
                            ("--http-address", "--query-address")):
            out = cli("agent", "--gpu=none", f"--data-dir={tmp_path / 'data'}",
                      f"--ingest-socket={tmp_path / 'ingest.sock'}",
                      f"{flag}=127.0.0.1:{port}", f"{other}=127.0.0.1:0")
            assert out.returncode == 1
            assert out.stderr.splitlines() == [
                f"vllm-audit: agent cannot listen on {flag}=127.0.0.1:{port}: Address already in use"]


def test_an_unwritable_data_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = cli("agent", "--gpu=none", f"--data-dir={blocker / 'wal'}",
              f"--ingest-socket={tmp_path / 'ingest.sock'}",
              "--query-address=127.0.0.1:0", "--http-address=127.0.0.1:0")
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert line.startswith("vllm-audit: agent cannot start: ") and "Not a directory" in line


def test_no_agent_is_one_line() -> None:
    address = f"127.0.0.1:{free_port()}"
    for args in (("query", "list"), ("set-level", "full"), ("tail", "--count", "1")):
        out = cli(*args, "--address", address)
        assert out.returncode == 1, args
        (line,) = out.stderr.splitlines()
        assert line.startswith(f"vllm-audit: UNAVAILABLE: no agent answers at {address} ("), args


def test_usage_errors() -> None:
    out = cli("--address", "127.0.0.1:1", "agent")
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["vllm-audit: --address/--output/--timeout are client "
                                       "options; the agent listens on --query-address"]
    out = cli("query", "list", "--output", "yaml")
    assert out.returncode == 2 and "invalid choice: 'yaml'" in out.stderr


async def test_standard_grpc_health_is_serving_then_not_serving_at_shutdown(tmp_path: Path) -> None:
    statuses: list[int] = []
    async with agent(tmp_path) as (handle, _):
        channel = grpc.aio.insecure_channel(handle.query_address)
        ingest = grpc.aio.insecure_channel(f"unix:{handle.state.config.ingest_socket}")
        for ch, names in ((channel, QUERY_HEALTH), (ingest, INGEST_HEALTH)):
            stub = health_pb2_grpc.HealthStub(ch)
            for name in names:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())

        first = asyncio.Event()

        async def follow() -> None:
            async for reply in watch:
                statuses.append(reply.status)
                first.set()

        follower = asyncio.create_task(follow())
        async with asyncio.timeout(10):
            await first.wait()
    # Leaving the block shuts the agent down: the watcher hears NOT_SERVING before the end.
    async with asyncio.timeout(10):
        await asyncio.gather(follower, return_exceptions=True)
    await channel.close()
    await ingest.close()
    assert statuses == [health_pb2.HealthCheckResponse.SERVING,
                        health_pb2.HealthCheckResponse.NOT_SERVING]


def test_the_top_level_help_names_every_level_set_level_takes() -> None:
    """The help's set-level line comes from the contract's levels (key-events was missing)."""
    from vllm_audit_agent.config import LEVELS

    out = cli("--help")
    assert out.returncode == 0
    (line,) = [ln.strip() for ln in out.stdout.splitlines() if "vllm-audit set-level" in ln]
    assert set(line.split()[-1].split("|")) == set(LEVELS) and "key-events" in LEVELS


async def test_a_refusal_for_want_of_a_token_names_the_token_files_tried(tmp_path: Path) -> None:
    async with agent(tmp_path) as (handle, _):
        elsewhere = tmp_path / "elsewhere"
        out = await acli("query", "health", "--address", handle.query_address,
                         "--data-dir", str(elsewhere))
        assert out.returncode == 1
        (line,) = out.stderr.splitlines()
        assert line.startswith("vllm-audit: UNAUTHENTICATED: ")
        assert "$VLLM_AUDIT_TOKEN unset" in line and "$VLLM_AUDIT_TOKEN_FILE unset" in line
        assert f"{elsewhere / 'admin.token'}: No such file or directory" in line
        # With the local agent's token (its data dir) any role may ask for health.
        ok = await acli("query", "health", "--address", handle.query_address,
                        env=local_admin(handle))
        assert ok.returncode == 0 and json.loads(ok.stdout)["status"] == "SERVING"
