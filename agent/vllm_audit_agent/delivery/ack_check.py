"""Noticing a broker that lost records it had acknowledged, and from where to send again.

A broker restarted on lost storage (a memory-only one, a wiped volume) or a topic deleted and
recreated accepts new records at offsets it had already given: the records acknowledged there
before are gone, though the publisher's cursor moved past them. The record log is the source
of truth, so the publisher sends them again from it. `AckedOffsets` remembers, per topic
partition, the offset each acknowledged batch got and the seq of its last record; an
acknowledgement at an offset not above the partition's highest one says that everything
acknowledged at or above it was lost, and `note` returns the seq to send again after.

Bounded: `max_marks` batches per partition. When the loss reaches back past what is kept, the
answer is 0 (the whole retained record log again; downstream de-duplicates on `event_id`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

#: Acknowledged batches remembered per partition (one (offset, seq) pair each).
MAX_MARKS = 16_384


class AckedOffsets:
    def __init__(self, max_marks: int = MAX_MARKS) -> None:
        self.max_marks = max_marks
        #: (topic, partition) -> (offset, last seq of the batch), offsets increasing.
        self._marks: dict[tuple[str, int], deque[tuple[int, int]]] = {}

    def note(self, metadata: Any, seq: int) -> int | None:
        """An acknowledgement (aiokafka's RecordMetadata) of a batch whose last record is
        `seq`. Returns None, or the seq after which to send again: the broker lost what it
        had acknowledged at this offset and above."""
        offset = getattr(metadata, "offset", None)
        topic, partition = getattr(metadata, "topic", None), getattr(metadata, "partition", None)
        if not isinstance(offset, int) or offset < 0 or topic is None or partition is None:
            return None  # a sink without offsets
        key = (str(topic), int(partition))
        marks = self._marks.setdefault(key, deque())
        if marks and offset == marks[-1][0]:
            # The same batch again (its records are settled in runs between other
            # partitions'). A broker that lost a partition holding one batch and gave its
            # offset again is not told apart from this: it needs a second batch to be seen.
            marks[-1] = (offset, max(seq, marks[-1][1]))
            return None
        rewind = None
        if marks and offset < marks[-1][0]:
            # Batches below the offset are still there; the last of them ends where sending
            # again starts (a partition's batches hold increasing seqs, acknowledged in order).
            kept = [s for o, s in marks if o < offset]
            rewind = kept[-1] if kept else 0
            while marks and marks[-1][0] >= offset:
                marks.pop()
        marks.append((offset, seq))
        if len(marks) > self.max_marks:
            marks.popleft()
        return rewind
