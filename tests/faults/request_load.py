"""Served requests as the real hook sends them at level summary, at a paced rate.

A request served by `vllm serve` reaches the agent in two halves from two processes:
- the EngineCore's hook (role `engine_core`): lifecycle ADDED and SCHEDULED when the
  scheduler takes it, FINISHED when it is freed, under vLLM's id `chatcmpl-<trail>-<8 chars>`;
- the API server's middleware (role `api_server`): one HTTP event after the response, under
  the trail id it gave vLLM (`X-Request-Id`), with the client's own header kept as
  `client_request_id` (here every two requests share one, as careless clients do).

Each half has its own real `Sender` thread and `EventBuffer`, as in the two processes. Every
field of a request is a function of its index, so the check reads back what was sent without
keeping it; a few requests are refused by vLLM's API-key check (HTTP 401, no engine half).

*Acknowledged* is per request: every one of its events entered its hook's buffer (the hook
keeps what it buffered until the agent acknowledges it; `flush` proves that). The generator
is each buffer's only producer, so an event is dropped exactly when its buffer is full at the
offer: that is checked before each offer and the request marked unacknowledged.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm_hooks.config.settings import HookSettings
from vllm_hooks.errors import InternalErrors
from vllm_hooks.events import raw_events as raw
from vllm_hooks.events.capture import CapturePolicy
from vllm_hooks.events.raw_events import EventConverter
from vllm_hooks.transport.buffer import EventBuffer
from vllm_hooks.transport.sender import Sender

ADDED, SCHEDULED, FINISHED = raw.ADDED, raw.SCHEDULED, raw.FINISHED
HMAC_KEY = b"fault-suite-hmac-key"
#: One request in REFUSED_EVERY is answered 401 by vLLM's API-key check: no engine half.
REFUSED_EVERY = 97


def prompt_text(i: int) -> str:
    return f"request {i}: summarise the quarterly report for desk {i % 41}"


def output_text(i: int) -> str:
    return f"summary {i}: revenue up {i % 13} percent"


def expected(i: int, trail: str) -> dict[str, Any]:
    """The record fields request `i` must come back with (capture policy hmac)."""
    policy = CapturePolicy(HMAC_KEY)
    refused = i % REFUSED_EVERY == 0
    return {
        "trail_id": trail,
        "user": f"user-{i % 251}",
        "client_request_id": f"client-{i // 2}",
        "tenant": f"tenant-{i % 7}",
        "model": "tiny",
        "status_code": 401 if refused else 200,
        "auth_status": "rejected" if refused else "ok",
        "prompt_tokens": 0 if refused else 20 + i % 50,
        "completion_tokens": 0 if refused else 1 + i % 200,
        "finish_reason": "" if refused else "stop",
        "max_tokens": 0 if refused else 256,
        "prompt": policy.apply("hmac", prompt_text(i)),
        "vllm_request_id": "" if refused else f"chatcmpl-{trail}",
        "state": "TRAIL_STATE_FAILED" if refused else "TRAIL_STATE_FINISHED",
        "finalised_by": "FINALISED_BY_COMPLETE",
        "incomplete": [],
    }


@dataclass
class LoadFigures:
    offered: int = 0
    seconds: float = 0.0
    #: Requests at least one of whose events found its hook's buffer full.
    dropped: int = 0
    #: Longest the generator fell behind its schedule (seconds): the pacing's own limit.
    max_lag_s: float = 0.0
    #: Offered requests per second of each one-second window.
    per_second: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.offered / self.seconds if self.seconds else 0.0


class RequestLoad:
    """Two real hook senders (API server and engine core) fed paced requests."""

    def __init__(self, socket: Path, buffer_events: int, **settings: object) -> None:
        self.run = secrets.token_hex(4)
        self.senders: list[Sender] = []
        self.buffers: list[EventBuffer] = []
        self.errors = InternalErrors()
        for role in ("api_server", "engine_core"):
            hook = HookSettings(enabled=True, agent_address=str(socket),
                                buffer_events=buffer_events, **settings)  # type: ignore[arg-type]
            buffer = EventBuffer(buffer_events)
            sender = Sender(hook, buffer, EventConverter(hook, CapturePolicy(HMAC_KEY)),
                            self.errors, lambda *config: None, role, model="tiny")
            self.senders.append(sender)
            self.buffers.append(buffer)
        self.api, self.engine = self.senders
        self.api_buffer, self.engine_buffer = self.buffers
        #: 1 where request i was acknowledged by its hooks (every event buffered).
        self.acked = bytearray()
        self.figures = LoadFigures()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def trail(self, i: int) -> str:
        """The id the middleware would give vLLM: 32 hex characters, unique per request."""
        return f"{self.run}{i:024x}"

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> RequestLoad:
        for sender in self.senders:
            sender.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for sender in self.senders:
            sender.close(2.0)

    def start(self, rate: float, tick_s: float = 0.005) -> None:
        self._thread = threading.Thread(target=self._generate, args=(rate, tick_s),
                                        name="request-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(s.flush(max(0.0, deadline - time.monotonic())) for s in self.senders)

    def dropped_events(self) -> int:
        return sum(sum(b.dropped_total().values()) for b in self.buffers)

    def acked_indices(self) -> list[int]:
        return [i for i, ok in enumerate(self.acked) if ok]

    # -- the generator -------------------------------------------------------------------
    def _generate(self, rate: float, tick_s: float) -> None:
        """Starts requests on schedule (`rate` per second) and finishes each one tick later
        (engine FINISHED, then the HTTP event after the response), until stopped."""
        start = time.monotonic()
        started: deque[tuple[int, int]] = deque()  # (index, start ns)
        figures = self.figures
        second_start, second_count = start, 0
        i = 0
        while not self._stop.is_set():
            now = time.monotonic()
            due = int((now - start) * rate)
            figures.max_lag_s = max(figures.max_lag_s, (due - i) / rate)
            while started:
                self._finish(*started.popleft())
            now_ns = time.time_ns()
            while i < due:
                self.acked.append(1)
                self._begin(i, now_ns)
                started.append((i, now_ns))
                i += 1
                second_count += 1
            if now - second_start >= 1.0:
                figures.per_second.append(second_count)
                second_start, second_count = now, 0
            figures.offered, figures.seconds = i, time.monotonic() - start
            self._stop.wait(tick_s)
        while started:
            self._finish(*started.popleft())
        figures.offered, figures.seconds = i, time.monotonic() - start

    def _offer(self, buffer: EventBuffer, i: int, event: tuple[Any, ...]) -> None:
        if len(buffer) >= buffer.capacity and self.acked[i]:  # single producer: it drops
            self.acked[i] = 0
            self.figures.dropped += 1
        buffer.offer(event)

    def _begin(self, i: int, now_ns: int) -> None:
        if i % REFUSED_EVERY == 0:
            return  # refused by the API server: never reaches the engine
        engine_id = f"chatcmpl-{self.trail(i)}-{i & 0xFFFFFFFF:08x}"
        prompt = 20 + i % 50
        self._offer(self.engine_buffer, i,
                    (raw.LIFECYCLE, now_ns, engine_id, ADDED, prompt, 0, "", "", 256, False))
        self._offer(self.engine_buffer, i,
                    (raw.LIFECYCLE, now_ns, engine_id, SCHEDULED, 0, 0, "", "", 0, False))

    def _finish(self, i: int, start_ns: int) -> None:
        trail = self.trail(i)
        refused = i % REFUSED_EVERY == 0
        now_ns = time.time_ns()
        prompt, completion = 20 + i % 50, 1 + i % 200
        if not refused:
            engine_id = f"chatcmpl-{trail}-{i & 0xFFFFFFFF:08x}"
            self._offer(self.engine_buffer, i,
                        (raw.LIFECYCLE, now_ns, engine_id, FINISHED, prompt, completion, "stop",
                         "FINISHED_STOPPED", 256, False))
        latency_ms = (now_ns - start_ns) / 1e6
        self._offer(self.api_buffer, i, (raw.HTTP, start_ns, trail, {
            "method": "POST", "path": "/v1/chat/completions",
            "client_ip": f"10.{i % 251}.{i % 13}.{i % 7 + 1}", "user": f"user-{i % 251}",
            "model": "tiny", "status_code": 401 if refused else 200,
            "auth_status": "rejected" if refused else "ok",
            "api_key_sha256": hashlib.sha256(b"key-%d" % (i % 5)).hexdigest(),
            "stream": False, "prompt": prompt_text(i),
            "output": "" if refused else output_text(i),
            "prompt_tokens": 0 if refused else prompt,
            "completion_tokens": 0 if refused else completion,
            "latency_ms": latency_ms, "ttft_ms": latency_ms / 2,
            "error": "invalid API key" if refused else "", "client_disconnected": False,
            "user_agent": "fault-suite/1", "response_bytes": 90 if refused else 420,
            "tenant": f"tenant-{i % 7}",
            "vllm_request_id": "" if refused else f"chatcmpl-{trail}",
            "client_request_id": f"client-{i // 2}",
        }))
