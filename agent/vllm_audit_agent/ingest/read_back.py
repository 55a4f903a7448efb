"""IngestService.ReadAudit: a hook reads back the structured-output audit of a request its own
vLLM served, over the ingest socket, for the response (VLLM_AUDIT_IN_RESPONSE).

Who may read what:
- The caller presents its VLLM_AUDIT_INSTANCE_KEY, the key the hook processes of one vLLM
  launch share; their batches carry its tag (the first 16 bytes of its SHA-256). A trail is
  answered only when one of the sources that wrote events into it has that tag: the API
  server reads the audit its own EngineCore wrote, and a peer of the socket reads back nothing
  its own vLLM did not write (the tags travel only from hooks to the agent, and a tag does not
  give the key). Otherwise NOT_FOUND, the same as no trail: which of the two is not said.
- Only the fields the in-response audit shows: the grammar's backend, spec type and error,
  the structured-output summary, the finish reason, and (asked for) the grammar events. Never
  the identity, prompt, output or anything of the HTTP half.
- Bounded: a key of at most 64 bytes, at most 4 trail ids of at most 256 bytes each, and a
  reply's events up to MAX_REPLY_EVENT_BYTES (the rest counted in events_omitted).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from vllm_audit.v1 import events_pb2 as pb
from vllm_audit.v1 import ingest_pb2
from vllm_audit_agent.ingest.sources import SourceState
from vllm_audit_agent.model.trail import Trail
from vllm_audit_agent.trails.store import TrailStore

MAX_KEY_BYTES = 64
MAX_TRAIL_IDS = 4
MAX_ID_BYTES = 256
#: Serialised grammar events in one reply, at most: under the hook's default 8 MiB message
#: limit with room to spare (a full-with-allowed-sets trail can be larger; its summary stays).
MAX_REPLY_EVENT_BYTES = 4 << 20
#: The grammar events the full response level shows.
_GRAMMAR_BODIES = frozenset({"grammar_compiled", "so_step", "so_summary"})


def instance_tag(key: bytes) -> bytes:
    """Batch.instance_tag of the hooks that hold `key` (the contract's definition)."""
    return hashlib.sha256(key).digest()[:16]


def check_request(request: ingest_pb2.ReadAuditRequest) -> str:
    """What is out of bounds in `request` ("" when nothing)."""
    if not request.instance_key or len(request.instance_key) > MAX_KEY_BYTES:
        return f"instance_key must be 1 to {MAX_KEY_BYTES} bytes"
    if not request.trail_ids or len(request.trail_ids) > MAX_TRAIL_IDS:
        return f"trail_ids must name 1 to {MAX_TRAIL_IDS} trails"
    if any(len(t.encode()) > MAX_ID_BYTES for t in request.trail_ids):
        return f"a trail id is over {MAX_ID_BYTES} bytes"
    return ""


def read_audit(request: ingest_pb2.ReadAuditRequest, trails: TrailStore,
               sources: Mapping[str, SourceState]) -> ingest_pb2.ReadAuditReply | None:
    """The audit of the first of `request.trail_ids` the caller's key may read, or None."""
    tag = instance_tag(request.instance_key)
    for trail_id in request.trail_ids:
        trail = trails.get(trail_id)
        if trail is not None and _written_by(trail, tag, sources):
            return _reply(trail, trails, request.include_events)
    return None


def _written_by(trail: Trail, tag: bytes, sources: Mapping[str, SourceState]) -> bool:
    for source_id in trail.source_ids:
        source = sources.get(source_id)
        if source is not None and source.instance_tag == tag:
            return True
    return False


def _reply(trail: Trail, trails: TrailStore, include_events: bool) -> ingest_pb2.ReadAuditReply:
    reply = ingest_pb2.ReadAuditReply(request_id=trail.request_id,
                                      finish_reason=trail.finish_reason,
                                      grammar_backend=trail.grammar_backend)
    if trail.grammar_event is not None:
        grammar = pb.Event.FromString(trail.grammar_event).grammar_compiled
        reply.grammar_spec_type, reply.grammar_error = grammar.spec_type, grammar.error
    if trail.so_event is not None:
        reply.structured_output.CopyFrom(pb.Event.FromString(trail.so_event).so_summary)
    if include_events:
        budget = MAX_REPLY_EVENT_BYTES
        for event in trails.parsed_events(trail):
            if event.WhichOneof("body") not in _GRAMMAR_BODIES:
                continue
            size = event.ByteSize()
            if size > budget:
                reply.events_omitted += 1
                continue
            budget -= size
            reply.events.append(event)
    return reply
