"""Where the in-response audit reads a request's structured-output audit from.

- `IngestReader` (the default): the agent's ingest socket, the one the hook already streams
  to (VLLM_AUDIT_AGENT_ADDRESS), through `IngestService.ReadAudit`. The credential is the key
  the hook processes of this vLLM launch share (config/instance_key.py): the agent answers
  only for trails with events from a process of this launch, and only the audit fields. So
  `VLLM_AUDIT_IN_RESPONSE=true` needs nothing else in the sidecar set-up.
- `QueryReader`: the agent's query API (VLLM_AUDIT_QUERY_ADDRESS + VLLM_AUDIT_QUERY_TOKEN,
  role auditor or admin), for an agent reached over TCP or one whose ingest socket should
  not answer reads (an agent older than ReadAudit answers UNIMPLEMENTED there).

Each reads synchronously (the caller runs it in a worker thread) and opens its channel lazily
in the process that uses it, again after a fork.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from vllm_hooks.config.instance_key import instance_key
from vllm_hooks.config.settings import HookSettings

#: The grammar events the full response level shows.
GRAMMAR_EVENTS = ("grammar_compiled", "so_step", "so_summary")


class ReadError(Exception):
    """The agent answered something other than the audit or "not there yet"."""


@dataclass
class Found:
    """A request's structured-output audit as the agent holds it."""

    request_id: str
    #: The engine's finish is in the trail: its structured-output summary is too.
    done: bool
    grammar_backend: str
    grammar_spec_type: str
    grammar_error: str
    structured_output: pb.StructuredOutputSummary
    events: list[pb.Event] = field(default_factory=list)


class _LazyChannel:
    """One channel per process, opened on first use."""

    def __init__(self, open_channel: Callable[[], grpc.Channel]) -> None:
        self._open = open_channel
        self._lock = threading.Lock()
        self._current: tuple[int, grpc.Channel] | None = None

    def get(self) -> grpc.Channel:
        with self._lock:
            current = self._current
            if current is None or current[0] != os.getpid():
                current = self._current = (os.getpid(), self._open())
            return current[1]


class IngestReader:
    def __init__(self, settings: HookSettings, include_events: bool) -> None:
        limit = settings.max_message_bytes
        self._channel = _LazyChannel(lambda: grpc.insecure_channel(
            settings.grpc_target(), options=[("grpc.max_receive_message_length", limit),
                                             ("grpc.enable_retries", 0)]))
        self.include_events = include_events

    def read(self, trail_ids: tuple[str, ...], timeout: float) -> Found | None:
        # the ignore[no-untyped-call] below: generated gRPC stubs are untyped
        stub = ingest_pb2_grpc.IngestServiceStub(self._channel.get())  # type: ignore[no-untyped-call]
        request = ingest_pb2.ReadAuditRequest(instance_key=instance_key().encode(),
                                              trail_ids=trail_ids,
                                              include_events=self.include_events)
        try:
            reply: ingest_pb2.ReadAuditReply = stub.ReadAudit(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code == grpc.StatusCode.NOT_FOUND:
                return None
            raise ReadError(f"agent: {code.name if code else 'UNKNOWN'}") from None
        return Found(reply.request_id, bool(reply.finish_reason or reply.grammar_error),
                     reply.grammar_backend, reply.grammar_spec_type, reply.grammar_error,
                     reply.structured_output, list(reply.events))


class QueryReader:
    def __init__(self, settings: HookSettings, include_events: bool) -> None:
        address = settings.query_address
        self._channel = _LazyChannel(lambda: grpc.insecure_channel(address))
        # The query API wants a bearer token with read access to every tenant (role auditor).
        self._metadata = (("authorization", f"Bearer {settings.query_token}"),)
        self.include_events = include_events

    def read(self, trail_ids: tuple[str, ...], timeout: float) -> Found | None:
        # the ignore[no-untyped-call] below: generated gRPC stubs are untyped
        stub = query_pb2_grpc.QueryServiceStub(self._channel.get())  # type: ignore[no-untyped-call]
        error = ""
        for trail_id in trail_ids:
            try:
                trail = self._get(stub, trail_id, timeout)
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code != grpc.StatusCode.NOT_FOUND:
                    error = f"agent: {code.name if code else 'UNKNOWN'}"
                continue
            s = trail.summary
            return Found(s.request_id, bool(s.finish_reason or s.grammar_error),
                         s.grammar_backend, s.grammar_spec_type, s.grammar_error,
                         s.structured_output,
                         [e for e in trail.events if e.WhichOneof("body") in GRAMMAR_EVENTS])
        if error:
            raise ReadError(error)
        return None

    def _get(self, stub: Any, trail_id: str, timeout: float) -> query_pb2.GetTrailResponse:
        """The trail, every page of its events (a long trail exceeds one message)."""
        request = query_pb2.GetTrailRequest(request_id=trail_id,
                                            include_events=self.include_events)
        trail: query_pb2.GetTrailResponse = stub.GetTrail(request, timeout=timeout,
                                                          metadata=self._metadata)
        while trail.next_event_offset:
            request.event_offset = trail.next_event_offset
            page = stub.GetTrail(request, timeout=timeout, metadata=self._metadata)
            trail.events.extend(page.events)
            trail.next_event_offset = page.next_event_offset
        return trail


def reader_for(settings: HookSettings) -> IngestReader | QueryReader:
    """The query API when its token is configured, else the ingest socket."""
    full = settings.response_level == "full"
    return QueryReader(settings, full) if settings.query_token else IngestReader(settings, full)
