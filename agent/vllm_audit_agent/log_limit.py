"""Rate-limited logging: a repeated line is let through a few times, then summarised.

A broker that is down makes the publisher, the engine-stats queue and aiokafka itself log the
same few lines for every retry and every reconnect: ~35 lines/s while Kafka was down (12,700
lines, 1.6 MB in 6 minutes), burying everything else. `LogRateLimit` is a `logging.Filter`
keyed by (logger, level, message template): each key has a token bucket (`burst` lines at
once, then one per `1/rate` seconds); a line past it is dropped and counted. The next line of
that key that passes says how many were suppressed since the last one, so nothing is hidden
without a count, and `suppressed` (by logger) is exported as a metric.

Stdlib only, so any room may use it. `install` puts the filter on the root logger's handlers,
where every propagated record passes (a filter on a logger does not see its children's
records, and aiokafka's loggers are made only when it is imported); it limits only loggers
under its `prefixes` and decides once per record however many handlers ask.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable

#: The agent's loggers and its Kafka client's (aiokafka logs each failed connection attempt).
LIMITED_LOGGERS = ("vllm_audit", "aiokafka")
#: Keys remembered at most (templates are few; a bound keeps a formatted-message flood small).
MAX_KEYS = 1024


class LogRateLimit(logging.Filter):
    """`burst` lines of a key at once, then `rate` per second on average; the rest counted.

    Thread-safe (aiokafka and the agent log from the event loop, gRPC from its threads)."""

    def __init__(self, prefixes: Iterable[str] = ("",), burst: int = 5, rate: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)
        self.burst = burst
        self.rate = rate
        self.clock = clock
        #: Lines suppressed, by the prefix their logger is under (exported at 0 from the start:
        #: vllm_audit_log_lines_suppressed).
        self.suppressed: Counter[str] = Counter(dict.fromkeys(self.prefixes, 0))
        # key -> [tokens, last refill time, suppressed since the last line that passed]
        self._keys: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()
        #: The last record decided and the decision (each handler of root asks again).
        self._last: tuple[logging.LogRecord | None, bool] = (None, True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        with self._lock:
            if self._last[0] is record:
                return self._last[1]
            passed = self._decide(record)
            self._last = (record, passed)
            return passed

    def _decide(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = [float(self.burst), now, 0.0]
            if len(self._keys) > MAX_KEYS:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        state[0] = min(float(self.burst), state[0] + (now - state[1]) * self.rate)
        state[1] = now
        if state[0] < 1.0:
            state[2] += 1
            self.suppressed[next(p for p in self.prefixes if record.name.startswith(p))] += 1
            return False
        state[0] -= 1.0
        hidden, state[2] = int(state[2]), 0.0
        if hidden:
            # Said in the line itself, so whoever reads the log sees the flood's size.
            record.msg = f"{record.msg} [{hidden} similar lines suppressed since the last one]"
        return True


def install(limit: LogRateLimit) -> Callable[[], None]:
    """Adds `limit` to every handler of the root logger (configured by the command line before
    the agent starts); returns the function that removes it again."""
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(limit)

    def remove() -> None:
        for handler in handlers:
            handler.removeFilter(limit)

    return remove
