"""Per-process hook runtime: buffer, sender thread and the current audit level.

Created lazily, keyed on the pid: vLLM loads plugins in every process and, under fork, a child
inherits the parent's objects without `register()` running again. A child drops the inherited
runtime without closing it (its channel and thread belong to the parent) and builds its own on
first use.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading

from vllm_hooks.config.levels import Level
from vllm_hooks.config.settings import HookSettings, settings
from vllm_hooks.errors import ERRORS
from vllm_hooks.events.capture import CapturePolicy
from vllm_hooks.events.raw_events import EventConverter
from vllm_hooks.events.self_timing import SelfTimer
from vllm_hooks.transport.buffer import EventBuffer
from vllm_hooks.transport.sender import Sender

logger = logging.getLogger("vllm_hooks")

_lock = threading.Lock()
_runtime: HookRuntime | None = None


class HookRuntime:
    def __init__(self, settings: HookSettings, role: str) -> None:
        self.pid = os.getpid()
        self.settings = settings
        self.role = role
        #: Read on every hook call site; an int compare is the whole cost of a disabled level.
        self.level = int(settings.level)
        self.config_version = 0
        self.config_epoch = 0
        #: VLLM_AUDIT_SELF_TIMING: None when off, and then no timed wrapper is ever installed.
        self.timer: SelfTimer | None = SelfTimer() if settings.self_timing else None
        self.buffer = EventBuffer(settings.buffer_events)
        self.buffer.batch_hint = settings.batch_events
        self.policy = CapturePolicy(settings.hmac_key)
        if not self.policy.key_configured:
            logger.warning(
                "vllm-audit: no HMAC key configured; hmac-captured fields use a per-process key"
            )
        self.sender = Sender(
            settings,
            self.buffer,
            EventConverter(settings, self.policy),
            ERRORS,
            self.apply_config,
            role,
            timer=self.timer,
        )
        self.sender.applied_config = (settings.level.wire, 0, 0)  # the wire number
        self._closed = False

    def start(self) -> None:
        self.sender.start()
        atexit.register(self.close, 2.0)

    def apply_config(self, level: int, version: int, epoch: int = 0) -> None:
        """Called by the sender thread when the agent pushes configuration.

        Versions are ordered only within one agent start (epoch): a restarted agent counts
        from 1 again, so a config from another epoch is always taken. What is applied is
        reported back on every batch (`Batch.applied_level`), so a hook that did not follow
        is visible at the agent. `level` is the wire number; the runtime holds the capture
        rank (see Level: KEY_EVENTS is wire 5 but ranks between SUMMARY and FULL)."""
        try:
            new = Level.from_wire(level)
        except ValueError:
            logger.warning("vllm-audit: ignoring unknown audit level %d from the agent", level)
            return
        if epoch == self.config_epoch and version < self.config_version:
            return  # stale within this agent start
        self.config_epoch, self.config_version = epoch, version
        if new != self.level:
            logger.info("vllm-audit: audit level %s -> %s", Level(self.level).name, new.name)
        self.level = int(new)
        self.sender.applied_config = (new.wire, epoch, version)
        self.buffer.wakeup.set()  # report it now, even with nothing else to send

    def close(self, timeout: float = 2.0) -> dict[str, int]:
        if self._closed or os.getpid() != self.pid:
            return {}
        self._closed = True
        return self.sender.close(timeout)


def get_runtime(role: str) -> HookRuntime:
    """The runtime of this process, created (and its sender started) on first use."""
    global _runtime
    rt = _runtime
    if rt is not None and rt.pid == os.getpid():
        return rt
    with _lock:
        rt = _runtime
        if rt is None or rt.pid != os.getpid():
            rt = HookRuntime(settings(), role)
            rt.start()
            _runtime = rt
        return rt


def current_runtime() -> HookRuntime | None:
    rt = _runtime
    return rt if rt is not None and rt.pid == os.getpid() else None


def _forget_after_fork() -> None:
    global _runtime
    # Do not close: the channel and thread belong to the parent process.
    _runtime = None


os.register_at_fork(after_in_child=_forget_after_fork)
