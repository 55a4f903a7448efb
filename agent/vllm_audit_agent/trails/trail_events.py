"""A batch's events onto trails: grouped by request, stored on the request's trail (serialised,
at most `max_events`, the rest counted), each applied by its kind, and what a trail then
costs in memory.

Events are grouped by request id first: a batch holds many events of few requests (one per
grammar step at level full), so the store correlates, looks up and checks completeness once
per request and batch, not once per event.
"""

from __future__ import annotations

from collections import Counter

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.model.trail import Trail
from vllm_audit_agent.model.validation import Classified

#: Python overhead of a trail beyond its serialised events (the Trail object, its engine
#: request ids, the store's and the index's entries), measured as resident growth per trail
#: (scripts/benchmarks.py: ~1.8 KiB for a summary trail whose 4 events take ~0.9 KiB).
TRAIL_OVERHEAD_BYTES = 1024
#: Overhead of one stored event beyond its serialised bytes (bytes object + list slot).
EVENT_OVERHEAD_BYTES = 48


def by_request(classified: Classified) -> dict[str, list[tuple[pb.Event, str]]]:
    """A batch's events (with their kinds) per request id, in batch order; engine stats,
    which belong to no request, are left out."""
    groups: dict[str, list[tuple[pb.Event, str]]] = {}
    for item, request_id in zip(zip(classified.events, classified.kinds, strict=True),
                                classified.request_ids, strict=True):
        if request_id:  # engine stats carry none
            group = groups.get(request_id)
            if group is None:
                groups[request_id] = [item]
            else:
                group.append(item)
    return groups


def add_events(trail: Trail, events: list[tuple[pb.Event, str]], max_events: int,
               counters: Counter[str]) -> None:
    """Stores one request's events of a batch on its trail and applies each by its kind."""
    room = max_events - len(trail.events)
    stored: list[bytes] = []
    added = 0
    truncated = 0
    for event, kind in events:
        raw = event.SerializeToString()
        if room > 0:
            stored.append(raw)
            added += len(raw)
            room -= 1
        else:
            counters["events_truncated"] += 1
        if event.truncated:
            truncated += 1
        if kind == "so_step":  # the bulk at level full; only stored
            continue
        if kind == "lifecycle":
            trail.apply_lifecycle(event, raw)
        elif kind == "http":
            trail.apply_http(event, raw)
        elif kind == "so_summary":
            trail.apply_so_summary(event, raw)
            # Allowed-token sets the hook dropped over its caps (level
            # full-with-allowed-sets).
            so = event.so_summary
            counters["allowed_sets_dropped_step_cap"] += so.allowed_sets_over_step_cap
            counters["allowed_sets_dropped_trail_cap"] += so.allowed_sets_over_trail_cap
            counters["allowed_sets_dropped_backlog"] += so.allowed_sets_over_backlog
        elif kind == "grammar_compiled":
            trail.apply_grammar(event, raw)
    if stored:
        trail.events = (*trail.events, *stored) if trail.events else tuple(stored)
    trail.num_events += len(events)
    trail.truncated_events += truncated
    trail.event_bytes += added + EVENT_OVERHEAD_BYTES * len(stored)


def trail_size(trail: Trail, max_events: int) -> int:
    """What the trail costs in memory: its stored events plus a fixed overhead."""
    size = TRAIL_OVERHEAD_BYTES + trail.event_bytes
    # The latest event of a kind the summary reads is held even when `max_events` cut
    # it from `events`.
    for raw in (trail.http_event, trail.grammar_event, trail.so_event, trail.added_event):
        if raw is not None and len(trail.events) >= max_events:
            size += len(raw) + EVENT_OVERHEAD_BYTES
    return size
