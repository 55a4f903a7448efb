"""Expanding a `StructuredOutputSteps` event (steps as columns) into one `StructuredOutputStep`
event per step: the one reading the agent, the tests and the tools share.

The hook captures the steps of a whole engine step together and sends them as columns (one
message, not one per request per step); everything that reads a trail sees the per-step
events a hook of the previous release sent, field for field: a step's `allowed_tokens` is
the first of its `allowed_per_token` (-1 when it has no token), as the hook always set it.

Pure Python: it ships with the contract, which the agent's slim image installs without numpy.
"""

from __future__ import annotations

from vllm_audit.v1 import events_pb2 as pb


class StepColumnsError(ValueError):
    """The columns do not line up (a broken or hostile sender): nothing of the message is used."""


def _check(cols: pb.StructuredOutputSteps) -> int:
    """The number of steps; raises when a column does not have the length it must."""
    n = len(cols.step)
    for name in ("request_index", "token_counts", "accepted", "terminated"):
        if len(getattr(cols, name)) != n:
            raise StepColumnsError(f"{name} has {len(getattr(cols, name))} entries for {n} steps")
    for name in ("drafted_tokens", "accepted_draft_tokens", "rolled_back_draft_tokens",
                 "allowed_sets", "allowed_set_truncated"):
        if len(getattr(cols, name)) not in (0, n):
            raise StepColumnsError(f"{name} has {len(getattr(cols, name))} entries for {n} steps")
    tokens = sum(cols.token_counts)
    if len(cols.tokens) != tokens or len(cols.allowed_per_token) != tokens:
        raise StepColumnsError(f"{len(cols.tokens)} tokens and {len(cols.allowed_per_token)} "
                               f"allowed counts for token counts summing to {tokens}")
    if n and max(cols.request_index) >= len(cols.request_ids):
        raise StepColumnsError("a request index past the request ids")
    return n


def expand(event: pb.Event) -> list[pb.Event]:
    """The per-step events of a `so_steps` event, in column order. Raises StepColumnsError."""
    cols = event.so_steps
    n = _check(cols)
    ids, index = list(cols.request_ids), list(cols.request_index)
    steps, counts = list(cols.step), list(cols.token_counts)
    tokens, allowed = list(cols.tokens), list(cols.allowed_per_token)
    accepted, terminated = list(cols.accepted), list(cols.terminated)
    drafted = list(cols.drafted_tokens)
    accepted_drafts = list(cols.accepted_draft_tokens)
    rolled_back = list(cols.rolled_back_draft_tokens)
    sets = list(cols.allowed_sets)
    truncated_sets = list(cols.allowed_set_truncated)
    time_ns, truncated, vocab = event.time_unix_nano, event.truncated, cols.vocab_size
    out: list[pb.Event] = []
    pos = 0
    for i in range(n):
        k = counts[i]
        per_token = allowed[pos:pos + k]
        step = pb.StructuredOutputStep(
            step=steps[i], accepted_tokens=tokens[pos:pos + k],
            allowed_tokens=per_token[0] if k else -1, accepted=accepted[i],
            terminated=terminated[i], vocab_size=vocab, allowed_per_token=per_token)
        pos += k
        if drafted:
            step.drafted_tokens = drafted[i]
        if accepted_drafts:
            step.accepted_draft_tokens = accepted_drafts[i]
        if rolled_back:
            step.rolled_back_draft_tokens = rolled_back[i]
        if sets and sets[i].WhichOneof("encoding") is not None:
            step.allowed_set.CopyFrom(sets[i])
        if truncated_sets and truncated_sets[i]:
            step.allowed_set_truncated = True
        out.append(pb.Event(time_unix_nano=time_ns, request_id=ids[index[i]],
                            truncated=truncated, so_step=step))
    return out
