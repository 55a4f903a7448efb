"""Internal errors of the hook: swallowed at every boundary with vLLM, and counted.

The hook must never raise into vLLM. Each call site wraps its body so that an error is
counted by site (visible in the next batch's gap marker) and logged once per site. Tests
install a strict mode that re-raises, turning a swallowed error into a failure.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

logger = logging.getLogger("vllm_hooks")


class InternalErrors:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._logged: set[str] = set()
        self.strict = False

    def record(self, site: str, exc: BaseException) -> None:
        with self._lock:
            self._counts[site] += 1
            first = site not in self._logged
            self._logged.add(site)
        if first:
            # One line per site, not per error: an error on the hot path must not flood logs.
            logger.warning("vllm-audit hook error at %s (further ones counted): %r", site, exc)
        if self.strict:
            raise exc

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


#: Process-wide; a plain object with no I/O, so creating it at import is harmless and lets the
#: hot path reach it without a lookup. Reset in a forked child (see runtime.py).
ERRORS = InternalErrors()
