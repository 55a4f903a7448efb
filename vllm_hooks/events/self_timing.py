"""Self-timing (VLLM_AUDIT_SELF_TIMING=true): the hook clocks what it costs where it is paid.

- On vLLM's threads: wall time inside the hook's own code. The choice is made once, when the
  hook wraps vLLM: with self-timing off the untimed wrappers are installed and nothing here
  runs (no flag is read per call). With it on, each wrapper runs inside a *hook region* and
  the vLLM method it wraps inside a *vLLM region*; a region's own time is its elapsed time
  minus the vLLM regions inside it, so a nested call is counted once, on its side. The
  wrapper frames themselves are hook time: they are what the hook adds to every call. The
  grammar proxy's per-request work (`accept_tokens`) is clocked flat around the bookkeeping;
  its pure delegations (`fill_bitmask`, `is_terminated`, ...: one Python frame each, ~0.1 µs)
  are not clocked, since clocking them would cost more than they do (the synthetic
  benchmark's A/B figure includes them).
- On its background threads: CPU time (`time.thread_time_ns`) of the sender, the ack reader
  and the thread gRPC runs the request iterator on — serialisation and transport, paid on
  vLLM's cores though not on its threads.

Cumulative figures go on every batch (`Batch.self_timing`); the agent exports them per source
(`vllm_audit_hook_self_seconds` and friends), so a benchmark and an operator read the same
numbers. Regions are used on one thread per process (the engine thread, the frontend's
output handler); the API server's middleware, whose requests interleave on the event loop,
adds flat measurements of its synchronous parts instead. Each timed call costs about two
clock reads (~0.1-0.3 µs), counted as hook time: the figures are an upper bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from vllm_audit.v1 import events_pb2 as pb

F = TypeVar("F", bound=Callable[..., Any])

clock = time.perf_counter_ns

class SelfTimer:
    """Cumulative cost counters of one process's hook."""

    def __init__(self, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.clock = clock
        self.hook_ns = 0
        self.hook_calls = 0
        self.steps = 0
        self.request_steps = 0
        self.sender_cpu_ns = 0
        self.stat_logger_ns = 0
        self.stat_logger_calls = 0
        self.middleware_ns = 0
        self.middleware_requests = 0
        #: vLLM time spent inside timed regions (for subtracting from the hook's).
        self.vllm_ns = 0
        self._cpu_lock = threading.Lock()

    # -- vLLM's threads ----------------------------------------------------------------------
    def hook_region(self, fn: F) -> F:
        """`fn` timed as hook code, minus the vLLM regions it calls. Hook regions do not nest
        in each other (a hook region inside a vLLM region inside one does)."""
        now = self.clock

        def region(*args: Any, **kwargs: Any) -> Any:
            start = now()
            inner = self.vllm_ns
            try:
                return fn(*args, **kwargs)
            finally:
                self.hook_ns += now() - start - (self.vllm_ns - inner)
                self.hook_calls += 1

        # the ignore[return-value] below: the wrapper keeps the callable's signature
        return region  # type: ignore[return-value]

    def vllm_region(self, fn: F) -> F:
        """`fn` timed as vLLM's own work: subtracted from the hook region around it. Its
        whole span counts, hook regions inside it included (they count their own time too,
        for themselves): setting, not adding, keeps nested vLLM time from counting twice."""
        now = self.clock

        def region(*args: Any, **kwargs: Any) -> Any:
            start = now()
            inner = self.vllm_ns
            try:
                return fn(*args, **kwargs)
            finally:
                self.vllm_ns = inner + (now() - start)

        # the ignore[return-value] below: the wrapper keeps the callable's signature
        return region  # type: ignore[return-value]

    def add(self, ns: int) -> None:
        """A flat measurement on the engine path (not inside a region)."""
        self.hook_ns += ns
        self.hook_calls += 1

    def stat_logger_call(self, fn: F) -> F:
        """The stat logger's record(), timed whole (it wraps no vLLM call)."""
        now = self.clock

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.stat_logger_ns += now() - start
                self.stat_logger_calls += 1

        # the ignore[return-value] below: the wrapper keeps the callable's signature
        return timed  # type: ignore[return-value]

    def middleware(self, ns: int) -> None:
        """A synchronous piece of the request middleware on the event loop."""
        self.middleware_ns += ns

    def middleware_request(self) -> None:
        self.middleware_requests += 1

    def step(self, requests: int) -> None:
        if requests:
            self.steps += 1
            self.request_steps += requests

    # -- the hook's background threads ---------------------------------------------------------
    def cpu_meter(self) -> Callable[[], None]:
        """A meter for the calling thread: each call adds the thread's CPU time since the
        previous call (or since the meter was made). Make it on the thread it measures."""
        last = time.thread_time_ns()

        def meter() -> None:
            nonlocal last
            now = time.thread_time_ns()
            with self._cpu_lock:  # several threads add to one total
                self.sender_cpu_ns += now - last
            last = now

        return meter

    # -- reporting -------------------------------------------------------------------------------
    def snapshot(self) -> tuple[int, ...]:
        """The figures in HookSelfTiming's field order."""
        return (self.hook_ns, self.hook_calls, self.steps, self.request_steps,
                self.sender_cpu_ns, self.stat_logger_ns, self.stat_logger_calls,
                self.middleware_ns, self.middleware_requests)

    def fill(self, message: pb.HookSelfTiming) -> None:
        (message.hook_ns, message.hook_calls, message.steps, message.request_steps,
         message.sender_cpu_ns, message.stat_logger_ns, message.stat_logger_calls,
         message.middleware_ns, message.middleware_requests) = self.snapshot()
