"""The agent in-process on real sockets: a Unix-socket ingest server, loopback gRPC query API
and HTTP endpoint, each bound to a fresh port, with an in-memory publisher to read back."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import Any

import grpc

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2_grpc
from vllm_audit_agent.api.tokens import ADMIN_TOKEN_FILE
from vllm_audit_agent.cli.client import aio_channel
from vllm_audit_agent.config import AgentConfig
from vllm_audit_agent.delivery.no_kafka import InMemoryPublisher
from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.records.log_start import LogStart
from vllm_audit_agent.server import AgentHandle, running_agent
from vllm_audit_agent.telemetry.gpu import GpuReader


def agent_config(tmp: Path, **overrides: object) -> AgentConfig:
    values: dict[str, object] = {
        "ingest_socket": tmp / "ingest.sock", "query_address": "127.0.0.1:0",
        "http_address": "127.0.0.1:0", "data_dir": tmp / "data", "gpu": "none",
        "linger_seconds": 30.0,
    }
    values.update(overrides)
    return AgentConfig(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def agent(tmp: Path, gpu_reader: GpuReader | None = None, durable_publisher: bool = False,
                publisher: InMemoryPublisher | None = None, expected_errors: Collection[str] = (),
                record_log: type[RecordLog] = RecordLog,
                **overrides: object) -> AsyncIterator[tuple[AgentHandle, InMemoryPublisher]]:
    """Runs an agent; on a clean exit, fails if it swallowed any internal error (other than
    at the `expected_errors` sites, for tests that inject a failure)."""
    publisher = publisher or InMemoryPublisher(durable=durable_publisher)
    async with running_agent(agent_config(tmp, **overrides), publisher=publisher,
                             gpu_reader=gpu_reader, record_log=record_log) as handle:
        yield handle, publisher
        unexpected = {k: v for k, v in handle.state.errors.items() if k not in expected_errors}
        assert not unexpected, f"agent swallowed errors: {unexpected}"


class FailingRecordLog(RecordLog):
    """A record log whose `append` raises: injects an agent-side exception mid-stream (a final
    trail is recorded while its batch is applied). It remembers no earlier record, so a trail
    replayed from the WAL is recorded (and fails) again."""

    def end_replay(self) -> None:
        self.replay_event_ids = None

    def _apply_start(self, start: LogStart) -> None:
        super()._apply_start(dataclasses.replace(start, replay_event_ids=None))

    def append(self, record: dict[str, Any], *args: Any, **kwargs: Any) -> int:
        if kwargs.get("kind", "request") == "request":  # the log's own records (genesis) go in
            raise RuntimeError("injected record log failure")
        return super().append(record, *args, **kwargs)


def tokens_file(tmp: Path, roles: dict[str, tuple[str, str | None]]) -> Path:
    """A YAML tokens file of `roles` (name -> (role, tenant)); each token is name + '-secret'."""
    lines = ["tokens:"]
    for name, (role, tenant) in roles.items():
        sha = hashlib.sha256(f"{name}-secret".encode()).hexdigest()
        lines += [f"  - sha256: {sha}", f"    subject: {name}", f"    role: {role}"]
        if tenant:
            lines.append(f"    tenant: {tenant}")
    path = tmp / "tokens.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def admin_token(handle: AgentHandle) -> str:
    """The local admin token the agent made in its data dir (no tokens file configured)."""
    return (handle.state.config.data_dir / ADMIN_TOKEN_FILE).read_text().strip()


def _channel(handle: AgentHandle, token: str | None) -> grpc.aio.Channel:
    """One channel per agent and token, held by the handle: an aio channel nobody references
    closes itself, even under a call a temporary stub has just started."""
    token = token or admin_token(handle)
    channels: dict[str, grpc.aio.Channel] = handle.__dict__.setdefault("_test_channels", {})
    if token not in channels:
        channels[token] = aio_channel(handle.query_address, token)
    return channels[token]


def query(handle: AgentHandle, token: str | None = None) -> query_pb2_grpc.QueryServiceStub:
    """The query API as the local admin (or as the holder of `token`)."""
    return query_pb2_grpc.QueryServiceStub(_channel(handle, token))


def control(handle: AgentHandle, token: str | None = None) -> query_pb2_grpc.ControlServiceStub:
    return query_pb2_grpc.ControlServiceStub(_channel(handle, token))


def lifecycle(rid: str, phase: int, t: int, **kw: object) -> pb.Event:
    return pb.Event(time_unix_nano=t, request_id=rid,
                    lifecycle=pb.RequestLifecycle(phase=phase, **kw))  # type: ignore[arg-type]


class Hook:
    """A client speaking the ingest protocol over the real Unix socket."""

    def __init__(self, socket: Path, source: str = "src-1") -> None:
        self.channel = grpc.aio.insecure_channel(f"unix:{socket}")
        self.stub = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self.source = source
        self.outbox: asyncio.Queue[pb.Batch | None] = asyncio.Queue()
        self.replies: asyncio.Queue[ingest_pb2.IngestReply] = asyncio.Queue()

    async def __aenter__(self) -> Hook:
        async def requests() -> AsyncIterator[pb.Batch]:
            while (batch := await self.outbox.get()) is not None:
                yield batch

        self.call = self.stub.Stream(requests())

        async def read() -> None:
            async for reply in self.call:
                await self.replies.put(reply)

        self.reader = asyncio.create_task(read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.outbox.put(None)
        self.call.cancel()
        self.reader.cancel()
        await self.channel.close()

    async def send(self, seq: int, *events: pb.Event, **kw: object) -> ingest_pb2.IngestReply:
        await self.outbox.put(pb.Batch(source_id=self.source, seq=seq, events=events,
                                       **kw))  # type: ignore[arg-type]
        return await self.next("ack")

    async def send_batch(self, batch: pb.Batch) -> ingest_pb2.IngestReply:
        """Sends a batch exactly as given (any source, seq, epoch) and returns its answer."""
        await self.outbox.put(batch)
        return await self.next("ack")

    async def next(self, kind: str) -> ingest_pb2.IngestReply:
        async with asyncio.timeout(10):
            while True:
                reply = await self.replies.get()
                if reply.WhichOneof("body") == kind:
                    return reply


async def until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Polls a condition on real state (bounded), failing with what it waited for."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def requests_of(publisher: InMemoryPublisher) -> list[tuple[str, dict[str, Any]]]:
    """(trail id, record) of the request records published so far (checkpoints left out).
    (The Kafka key is the log's id, the same for all of them.)"""
    return [(str(record.get("trail_id") or record.get("request_id")), record)
            for topic, _, record in publisher.records if topic == "requests"]


async def published_keys(publisher: InMemoryPublisher, n: int, timeout: float = 30.0
                         ) -> list[str]:
    """Waits until `n` request records went through the record log to the publisher (it is
    asynchronous: append, group commit, then publish); returns their trail ids."""
    await until(lambda: len(requests_of(publisher)) >= n, f"{n} published records", timeout)
    return [key for key, _ in requests_of(publisher)]
