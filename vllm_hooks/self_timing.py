"""Self-timing (VLLM_AUDIT_SELF_TIMING=true): the hook clocks what it costs where it is paid.

- On vLLM's threads: wall time inside the hook's own code. The choice is made once, when the
  hook wraps vLLM: with self-timing off the untimed wrappers are installed and nothing here
  runs (no flag is read per call). With it on, each wrapper runs inside a *hook region* and
  the vLLM method it wraps inside a *vLLM region*; a region's own time is its elapsed time
  minus its children's, so nested calls (vLLM's `grammar_bitmask` calling the grammar proxy's
  `fill_bitmask`) are counted once, each on its side. The wrapper frames themselves are
  hook time, which is the point: they are what the hook adds to every call.
- On its background threads: CPU time (`time.thread_time_ns`) of the sender, the ack reader
  and the thread gRPC runs the request iterator on — serialisation and transport, paid on
  vLLM's cores though not on its threads.

Cumulative figures go on every batch (`Batch.self_timing`); the agent exports them per source
(`vllm_audit_hook_self_seconds` and friends), so a benchmark and an operator read the same
numbers. Regions keep a stack: they are only used on one thread per process (the engine
thread, the frontend's output handler); the API server's middleware, whose requests
interleave on the event loop, adds flat measurements of its synchronous parts instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from vllm_audit.v1 import events_pb2 as pb

F = TypeVar("F", bound=Callable[..., Any])

clock = time.perf_counter_ns

#: The proxy methods vLLM calls on a grammar; each is clocked as vLLM time in timed mode.
_GRAMMAR_METHODS = ("accept_tokens", "validate_tokens", "rollback", "fill_bitmask",
                    "is_terminated", "reset")


class SelfTimer:
    """Cumulative cost counters of one process's hook."""

    def __init__(self, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.clock = clock
        self.hook_ns = 0
        self.hook_calls = 0
        self.steps = 0
        self.request_steps = 0
        self.sender_cpu_ns = 0
        self._cpu_lock = threading.Lock()
        #: Children's elapsed time of each open region, innermost last.
        self._stack: list[int] = []

    # -- vLLM's threads ----------------------------------------------------------------------
    def hook_region(self, fn: F) -> F:
        """`fn` timed as hook code (minus the vLLM regions it calls)."""
        return self._region(fn, own_is_hook=True)

    def vllm_region(self, fn: F) -> F:
        """`fn` timed as vLLM's own work: subtracted from the hook region around it."""
        return self._region(fn, own_is_hook=False)

    def _region(self, fn: F, own_is_hook: bool) -> F:
        stack, now = self._stack, self.clock

        def region(*args: Any, **kwargs: Any) -> Any:
            stack.append(0)
            start = now()
            try:
                return fn(*args, **kwargs)
            finally:
                total = now() - start
                children = stack.pop()
                if stack:
                    stack[-1] += total
                if own_is_hook:
                    self.hook_ns += total - children
                    self.hook_calls += 1

        return region  # type: ignore[return-value]

    def add(self, ns: int) -> None:
        """A flat measurement (a synchronous piece of middleware on the event loop)."""
        self.hook_ns += ns
        self.hook_calls += 1

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
    def snapshot(self) -> tuple[int, int, int, int, int]:
        return (self.hook_ns, self.hook_calls, self.steps, self.request_steps,
                self.sender_cpu_ns)

    def fill(self, message: pb.HookSelfTiming) -> None:
        (message.hook_ns, message.hook_calls, message.steps, message.request_steps,
         message.sender_cpu_ns) = self.snapshot()


class _ClockedGrammar:
    """The real grammar behind an audited proxy, each call clocked as vLLM's work."""

    def __init__(self, inner: Any, timer: SelfTimer) -> None:
        self._inner = inner
        for name in _GRAMMAR_METHODS:
            setattr(self, name, timer.vllm_region(getattr(inner, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def clock_grammar(grammar: Any, timer: SelfTimer) -> Any:
    """Times an `AuditedGrammar` in place: its proxy methods become hook regions and the
    grammar it wraps is clocked as vLLM's. Instance attributes shadow the class's methods,
    so only this instance pays for it."""
    grammar._inner = _ClockedGrammar(grammar._inner, timer)
    for name in _GRAMMAR_METHODS:
        setattr(grammar, name, timer.hook_region(getattr(grammar, name)))
    return grammar
