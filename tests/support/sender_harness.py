"""The hook's real sender thread in the test process, pointed at a socket: one definition for
every test that drives it. On exit it closes the sender and fails if the sender swallowed an
internal error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vllm_hooks.config.settings import HookSettings
from vllm_hooks.errors import InternalErrors
from vllm_hooks.events.capture import CapturePolicy
from vllm_hooks.events.raw_events import EventConverter
from vllm_hooks.events.self_timing import SelfTimer
from vllm_hooks.transport.buffer import EventBuffer
from vllm_hooks.transport.sender import Sender


@contextmanager
def running_sender(socket: Path, buffer_events: int = 1000, role: str = "test",
                   timer: SelfTimer | None = None,
                   **settings: object) -> Iterator[tuple[Sender, EventBuffer]]:
    """`settings` are HookSettings fields (flush_ms defaults to 5 for quick tests)."""
    values: dict[str, object] = {"flush_ms": 5, **settings}
    hook = HookSettings(enabled=True, agent_address=str(socket), **values)  # type: ignore[arg-type]
    buffer = EventBuffer(buffer_events)
    errors = InternalErrors()
    sender = Sender(hook, buffer, EventConverter(hook, CapturePolicy(b"k")), errors,
                    lambda *config: None, role, timer=timer)
    sender.start()
    try:
        yield sender, buffer
    finally:
        sender.close(2.0)
    assert errors.snapshot() == {}, "the sender swallowed errors"
