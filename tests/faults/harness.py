"""Real parts for the fault suite: the agent as its own process (so it can be SIGKILLed and
SIGSTOPped), the hook's real sender thread in this process, the real broker, real files.

Ledger per fault: *sent* events offered to the hook; *acknowledged* = sent minus what the
hook counted as dropped (everything else it keeps until the agent acknowledges it);
*stored* trails the agent holds after the fault (and a restart); *published* distinct
records read back from Kafka; *lost* = acknowledged minus stored (or published);
*duplicated* = Kafka records beyond the first per key (at-least-once delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import orjson

from harness import procs
from vllm_audit.v1 import query_pb2, query_pb2_grpc
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.errors import InternalErrors
from vllm_hooks.events import raw_events as raw
from vllm_hooks.events.capture import CapturePolicy
from vllm_hooks.events.raw_events import EventConverter
from vllm_hooks.transport.buffer import EventBuffer
from vllm_hooks.transport.sender import Sender

FINISHED = raw.FINISHED


@dataclass
class FaultRow:
    fault: str
    sent: int
    acknowledged: int
    stored: int
    published: int | None
    lost: int
    duplicated: int | None
    note: str = ""


def format_table(rows: list[FaultRow]) -> list[str]:
    head = ("fault", "sent", "acked", "stored", "published", "lost", "dup", "note")
    cells = [head] + [(r.fault, str(r.sent), str(r.acknowledged), str(r.stored),
                       "-" if r.published is None else str(r.published), str(r.lost),
                       "-" if r.duplicated is None else str(r.duplicated), r.note)
                      for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    return ["  ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip() for c in cells]


class AgentProc:
    """`vllm-audit agent` as a child process on fresh loopback ports and a Unix socket."""

    def __init__(self, tmp: Path, data_dir: Path, socket: Path, *extra: str,
                 kafka: str | None = None, name: str = "agent") -> None:
        self.tmp, self.data_dir, self.socket = tmp, data_dir, socket
        self.extra = list(extra)
        self.kafka = kafka
        self.name = name
        self.proc: procs.Proc | None = None
        self.query_address = ""
        self.base = ""
        self.starts = 0

    def args(self) -> list[str]:
        self.query_address = f"127.0.0.1:{procs.free_port()}"
        http_port = procs.free_port()
        self.base = f"http://127.0.0.1:{http_port}"
        args = [procs.PYTHON, "-m", "vllm_audit_agent.cli", "agent", "--ingest-socket", str(self.socket),
                "--query-address", self.query_address,
                "--http-address", f"127.0.0.1:{http_port}", "--data-dir", str(self.data_dir),
                "--gpu", "none", "--shutdown-timeout", "10", *self.extra]
        if self.kafka:
            args += ["--kafka-bootstrap", self.kafka]
        return args

    def spawn(self) -> procs.Proc:
        self.starts += 1
        return procs.Proc(self.args(), procs.base_env(),
                          self.tmp / f"{self.name}-{self.starts}.log")

    def start(self) -> AgentProc:
        self.proc = self.spawn()
        try:
            procs.wait_until(lambda: self.proc is not None and self.proc.alive()
                             and procs.http_ok(self.base + "/readyz"), 60, "agent /readyz")
        except TimeoutError:
            log = self.proc.log_tail()
            self.proc.stop()
            raise RuntimeError(f"agent did not start:\n{log}") from None
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.proc.popen.wait(30)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def channel(self, options: list[tuple[str, object]] | None = None) -> grpc.Channel:
        """The query API as the local admin (the token the agent made in its data dir)."""
        from vllm_audit_agent.cli.client import channel

        return channel(self.query_address, (self.data_dir / "admin.token").read_text().strip(),
                       options=options)

    def stats(self) -> query_pb2.StatsResponse:
        with self.channel() as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            return stub.GetStats(query_pb2.StatsRequest(), timeout=10)

    def recorded_ids(self) -> list[str]:
        """Request ids of the records in the agent's record log (read from a scratch copy)."""
        import orjson

        from vllm_audit_agent.records.read_only import read_records

        records = (orjson.loads(p) for p in read_records(self.data_dir / "records"))
        return [str(r["request_id"]) for r in records if r.get("type") == "request"]

    def trail_ids(self) -> list[str]:
        ids: list[str] = []
        # A page of trails with 50 KB prompts is larger than gRPC's 4 MiB default.
        options = [("grpc.max_receive_message_length", 64 << 20)]
        with self.channel(options) as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            token = ""
            while True:
                page = stub.ListTrails(query_pb2.ListTrailsRequest(page_size=200,
                                                                   page_token=token), timeout=30)
                ids += [t.request_id for t in page.trails]
                token = page.next_page_token
                if not token:
                    return ids


@contextlib.contextmanager
def running(agent: AgentProc) -> Iterator[AgentProc]:
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


class Load:
    """The hook's real sender thread, fed one-event trails (a finished lifecycle each)."""

    def __init__(self, socket: Path, batch_events: int = 256, **settings: object) -> None:
        self.settings = HookSettings(enabled=True, agent_address=str(socket),
                                     batch_events=batch_events, flush_ms=5,
                                     **settings)  # type: ignore[arg-type]
        self.buffer = EventBuffer(1 << 20)
        self.errors = InternalErrors()
        self.sender = Sender(self.settings, self.buffer,
                             EventConverter(self.settings, CapturePolicy(b"k")), self.errors,
                             lambda *config: None, "fault-test")
        self.sent: list[str] = []

    def __enter__(self) -> Load:
        self.sender.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sender.close(2.0)

    def offer(self, n: int, prefix: str = "r") -> None:
        base = len(self.sent)
        for i in range(base, base + n):
            rid = f"{prefix}{i:07d}-0123abcd"
            self.sent.append(rid)
            self.buffer.offer((raw.LIFECYCLE, time.time_ns(), rid, FINISHED, 3, 5, "stop",
                               "FINISHED_STOPPED", 16, False))

    def offer_http(self, n: int, prompt_bytes: int, prefix: str = "h") -> None:
        base = len(self.sent)
        for i in range(base, base + n):
            rid = f"{prefix}{i:07d}"
            self.sent.append(rid)
            self.buffer.offer((raw.HTTP, time.time_ns(), rid, {
                "method": "POST", "path": "/v1/chat/completions", "status_code": 200,
                "model": "tiny", "prompt": "p" * prompt_bytes, "latency_ms": 12.5}))

    def dropped(self) -> int:
        return sum(self.buffer.dropped_total().values())

    def flush(self, timeout: float) -> bool:
        return self.sender.flush(timeout)


def kafka_keys(bootstrap: str, topic: str = "vllm-audit.requests",
               expect: int = 0, timeout: float = 60.0) -> list[str]:
    """Every record key in `topic` (with repeats), reading until `expect` distinct keys or a
    quiet second after the deadline."""

    async def read() -> list[str]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        keys: list[str] = []
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                got = await consumer.getmany(timeout_ms=1000)
                for records in got.values():
                    # the trail ids (the Kafka key is the log's id)
                    keys += [str(orjson.loads(r.value).get("trail_id")) for r in records if r.value]
                if expect and len(set(keys)) >= expect and not got:
                    break
        finally:
            await consumer.stop()
        return keys

    return asyncio.run(read())


def until(predicate: object, what: str, timeout: float = 60.0) -> None:
    procs.wait_until(predicate, timeout, what)  # type: ignore[arg-type]
