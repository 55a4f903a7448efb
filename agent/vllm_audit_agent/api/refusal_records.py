"""Refused calls on record, a flood as one record a window.

Every refusal (401 unauthenticated, 403 permission denied, 400 invalid input after
authentication, 429 over a budget) is an access record with its reason, the method, the
transport, the peer address and the token id when the token was known. A flood must not become
a flood of records (that would be one more way for a caller to fill the log): the first refusal
of a (peer, token id, reason, transport) key in a window is recorded at once; further ones in
that window are counted, and one record with their count closes the window. At most MAX_KEYS
keys are open at once; refusals past that go to one overflow key per reason, so memory and
records stay bounded whatever the number of peers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Seconds a (peer, token id, reason, transport) key aggregates refusals.
WINDOW_SECONDS = 60.0
#: Open keys at most; refusals beyond go to an overflow key per reason (peer "*").
MAX_KEYS = 4096

Key = tuple[str, str, str, str]  # peer, token id, reason, transport


@dataclass
class _Window:
    opened: float
    method: str
    status: str
    message: str
    repeated: int = 0
    methods: set[str] = field(default_factory=set)


def peer_host(address: str) -> str:
    """`ipv4:10.0.0.1:5000` -> `ipv4:10.0.0.1`, `ipv6:[::1]:5000` -> `ipv6:[::1]`; others as
    they are (a Unix socket's peer, HTTP's remote address)."""
    kind, _, rest = address.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rsplit(':', 1)[0]}"
    return address


class RefusalAggregator:
    """`write(fields)`: appends one access record (the sink's; it never raises)."""

    def __init__(self, write: Callable[[dict[str, Any]], object],
                 window_seconds: float = WINDOW_SECONDS, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write = write
        self.window_seconds = window_seconds
        self.max_keys = max_keys
        self.clock = clock
        self._open: dict[Key, _Window] = {}

    def note(self, *, reason: str, method: str, status: str, message: str, transport: str,
             peer: str, token_id: str) -> None:
        now = self.clock()
        self.flush(now)
        # By host, not connection: a flood over many connections (new source ports) is one.
        key: Key = (peer_host(peer), token_id, reason, transport)
        if key not in self._open and len(self._open) >= self.max_keys:
            key = ("*", "*", reason, transport)
        window = self._open.get(key)
        if window is not None:
            window.repeated += 1
            window.methods.add(method)
            return
        self._open[key] = _Window(now, method, status, message)
        self.write(self._fields(key, method, status, message, count=1, first=True))

    def flush(self, now: float | None = None, everything: bool = False) -> None:
        """Closes the windows that ended (all of them at shutdown): one record each with the
        refusals it counted after its first."""
        now = self.clock() if now is None else now
        for key, window in list(self._open.items()):
            if everything or now - window.opened >= self.window_seconds:
                del self._open[key]
                if window.repeated:
                    fields = self._fields(key, window.method, window.status, window.message,
                                          count=window.repeated, first=False)
                    fields["methods"] = sorted(window.methods | {window.method})
                    fields["window_seconds"] = self.window_seconds
                    self.write(fields)

    @staticmethod
    def _fields(key: Key, method: str, status: str, message: str, *, count: int,
                first: bool) -> dict[str, Any]:
        peer, token_id, reason, transport = key
        return {"outcome": "refused", "reason": reason, "status": status, "method": method,
                "detail": message[:256], "transport": transport, "peer": peer,
                "token_id": token_id, "count": count,
                "aggregated": not first}
