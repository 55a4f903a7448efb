"""Back-off for peers that keep presenting bad credentials.

200 wrong tokens in 0.14 s were all checked. Now a peer host past FAILURES_ALLOWED failed
credentials within WINDOW_SECONDS is refused at once for a back-off period, without its token
being looked at (RESOURCE_EXHAUSTED / 429 with the seconds to wait, reason `backoff`, counted and
on record like every refusal). Each further block of the same host doubles the period, up to
MAX_BACKOFF_SECONDS; a window without failures forgets the host. At most MAX_PEERS hosts are
tracked (the oldest are forgotten first), so memory stays bounded.

Who it stops: guessing tokens from one host at line rate. Who it does not: a guesser spread
over many hosts (each gets FAILURES_ALLOWED a window), and it can lock out a legitimate
client that shares its host (a NAT) with the guesser, for the back-off period.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_SECONDS = 60.0
FAILURES_ALLOWED = 20
FIRST_BACKOFF_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 900.0
MAX_PEERS = 10_000


@dataclass
class _Peer:
    window_start: float
    failures: int = 0
    blocked_until: float = 0.0
    backoff: float = 0.0


class CredentialBackoff:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._peers: dict[str, _Peer] = {}

    def blocked_for(self, host: str) -> float:
        """Seconds `host` must still wait (0: it may present a credential)."""
        peer = self._peers.get(host)
        return max(0.0, peer.blocked_until - self.clock()) if peer is not None else 0.0

    def failed(self, host: str) -> None:
        """One more bad credential from `host`: past the allowance, it is blocked."""
        now = self.clock()
        peer = self._peers.get(host)
        if peer is None or (now - peer.window_start > WINDOW_SECONDS and
                            now >= peer.blocked_until):
            if peer is None and len(self._peers) >= MAX_PEERS:
                del self._peers[next(iter(self._peers))]  # the oldest tracked host
            backoff = peer.backoff if peer is not None and peer.failures > FAILURES_ALLOWED \
                else 0.0
            peer = self._peers[host] = _Peer(now, backoff=backoff)
        peer.failures += 1
        if peer.failures > FAILURES_ALLOWED:
            peer.backoff = min(MAX_BACKOFF_SECONDS, peer.backoff * 2 or FIRST_BACKOFF_SECONDS)
            peer.blocked_until = now + peer.backoff
