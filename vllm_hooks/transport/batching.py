"""Cutting buffered events into batches by count and by bytes (sender thread only).

Events are converted to protobuf here, off vLLM's threads, and measured one by one
(`ByteSize`), so a batch never exceeds the per-batch byte cap: the cap sits well under the
transport's message limit, and a batch over that limit would be refused by the transport on
every resend. An event that alone exceeds the room left under the cap is truncated to fit
(`truncate.py`), counted in `events_truncated` and sent; one that cannot fit even then is
dropped and counted (`event_too_big`). Conversion errors are counted (`convert_error`). Both
drop counts go into the gap marker of the batch being filled (room is reserved for them). A
converted event that did not fit the current batch waits in `carry` for the next one, so the
order of events is kept.
"""

from __future__ import annotations

from collections import Counter, deque

from vllm_audit.v1 import events_pb2 as pb
from vllm_hooks.errors import InternalErrors
from vllm_hooks.events.raw_events import EventConverter
from vllm_hooks.transport.buffer import EventBuffer
from vllm_hooks.transport.truncate import truncate_to_fit

#: Wire overhead of one event inside a batch beyond its own bytes: the field tag (1 byte) and
#: at most a 5-byte length prefix.
_MAX_FRAMING = 6
#: Room kept for the drop counts `fill` may add to the gap marker: two map entries
#: ("convert_error", "event_too_big") of at most ~30 bytes each.
_GAP_RESERVE = 64


def framed_size(size: int) -> int:
    """Bytes one `Batch.events` entry of `size` bytes takes in the batch."""
    prefix, rest = 1, size >> 7
    while rest:
        rest >>= 7
        prefix += 1
    return 1 + prefix + size


class BatchFiller:
    def __init__(self, buffer: EventBuffer, converter: EventConverter, errors: InternalErrors,
                 max_events: int, max_bytes: int) -> None:
        self._buffer = buffer
        self._converter = converter
        self._errors = errors
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._carry: deque[pb.Event] = deque()
        #: Events sent cut to fit (each marked `Event.truncated`); not a drop.
        self.events_truncated = 0

    def pending(self) -> int:
        """Converted events waiting for the next batch."""
        return len(self._carry)

    def waiting(self) -> bool:
        return bool(self._carry) or len(self._buffer) > 0

    def fill(self, batch: pb.Batch) -> int:
        """Appends events to `batch`, whose header (ids, gap marker) is final, up to the count
        and byte caps; adds the drops it makes to the gap marker. Returns the batch's
        serialised size."""
        header = batch.ByteSize()
        room = self._max_bytes - header - _GAP_RESERVE
        used = 0
        count = 0
        events = batch.events
        carry = self._carry
        drops: Counter[str] = Counter()
        while count < self._max_events:
            if not carry and not self._refill(self._max_events - count, drops):
                break
            event = carry.popleft()
            n = event.ByteSize()
            size = n + 2 if n < 0x80 else framed_size(n)  # most events are small
            if used + size > room:
                if count:
                    carry.appendleft(event)  # first in the next batch
                    break
                # Alone in a batch it still does not fit: cut it to the room there is.
                already = event.truncated
                if not truncate_to_fit(event, room - _MAX_FRAMING):
                    drops["event_too_big"] += 1
                    continue
                if not already:
                    self.events_truncated += 1
                size = framed_size(event.ByteSize())
            events.append(event)
            used += size
            count += 1
        if not drops:
            return header + used
        gap = batch.gap.dropped_by_reason
        for reason, n in drops.items():
            gap[reason] = gap.get(reason, 0) + n
        return batch.ByteSize()

    def _refill(self, want: int, drops: Counter[str]) -> bool:
        """Converts up to `want` buffered events into the carry. False when none is left."""
        convert = self._converter.convert
        extend = self._carry.extend
        for raw in self._buffer.drain(want):
            try:
                extend(convert(raw))
            except Exception as exc:
                self._errors.record("sender.convert", exc)
                drops["convert_error"] += 1
        return bool(self._carry)
