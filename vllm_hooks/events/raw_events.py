"""Raw event tuples offered on vLLM's threads, and their conversion to protobuf.

The hot path builds a plain tuple (cheap, no allocation beyond the tuple); the sender thread
converts whole batches to `vllm_audit.v1.Event` messages (`EventConverter.convert`: none, one
or several per raw event). The first element is the kind.
"""

from __future__ import annotations

from typing import Any

from vllm_audit.v1 import events_pb2 as pb
from vllm_hooks.config.settings import HookSettings
from vllm_hooks.errors import ERRORS
from vllm_hooks.events.admin_parse import complete_admin_fields
from vllm_hooks.events.allowed_set_encoder import AllowedSetRecorder
from vllm_hooks.events.capture import CapturePolicy
from vllm_hooks.events.http_parse import complete_http_fields
from vllm_hooks.events.provenance import fill_added
from vllm_hooks.events.signals import content_signal_fields
from vllm_hooks.events.step_frames import StepFrames

# (KIND, time_ns, request_id, phase, n_prompt, n_output, finish_reason, status, max_tokens, so)
# and, on ADDED only, the caller's request id (vLLM's external_req_id) and then the provenance
# snapshot, vLLM's LoRARequest (or None) and its SamplingParams, read here (provenance.py)
LIFECYCLE = 1
# The phase of a LIFECYCLE tuple: the contract's LifecyclePhase numbers (one definition).
ADDED = pb.LIFECYCLE_PHASE_ADDED
SCHEDULED = pb.LIFECYCLE_PHASE_SCHEDULED
RESUMED = pb.LIFECYCLE_PHASE_RESUMED
PREEMPTED = pb.LIFECYCLE_PHASE_PREEMPTED
FINISHED = pb.LIFECYCLE_PHASE_FINISHED
ABORTED = pb.LIFECYCLE_PHASE_ABORTED
# (KIND, time_ns, request_id, backend, spec_type, compile_ms, error, spec_sha256, spec,
#  spec_size)
GRAMMAR = 2
# (KIND, time_ns, request_id, step, tokens, allowed, accepted, terminated, row, vocab,
#  allowed_per_token, drafted, accepted_drafts, rolled_back_drafts); row: the bytes of the
#  bitmask row (level full-with-allowed-sets, encoded here into allowed_set), ROW_OVER_BACKLOG
#  (the engine thread did not copy it: too many rows were waiting), or None (not captured).
#  One per-step message each: the engine thread makes ROWS and STEPS now (below); this form
#  stays convertible for tools and tests, and as what the columnar form must match.

STEP = 3
ROW_OVER_BACKLOG = b""
# (KIND, time_ns, request_id, backend, steps, accepted, rejected, allowed_min, allowed_max,
#  allowed_mean, terminated, rollbacks, first_rejected_token, first_rejected_step,
#  drafted, accepted_drafts, draft_rollbacks, rolled_back_drafts, rejection_fate)
SO_SUMMARY = 4
# (KIND, time_ns, "", dict of EngineStats fields)
STATS = 5
# (KIND, time_ns, x_request_id, dict of HttpRequest fields before the capture policy)
HTTP = 6
# (KIND, time_ns, request_id, name, dict of str attributes) — vllm_hooks.api
CUSTOM = 7
# (KIND, time_ns, x_request_id, dict of HttpRequest fields read on the event loop, request
#  body bytes, response body bytes): the middleware's event, whose bodies (up to 2 MiB of
#  JSON/SSE) are parsed here on the sender thread, never on vLLM's event loop.
HTTP_UNPARSED = 8
# (KIND, time_ns, "", dict of AdminAction fields read on the event loop, request body bytes,
#  response body bytes, query string bytes): a call to one of vLLM's administrative
#  endpoints, its arguments read (and secrets removed) here (admin_parse.py).
ADMIN_UNPARSED = 9
# Columnar step capture (levels key-events and up; step_frames.py), one of each per engine step:
# (KIND, 0, "", request ids in row order, a copy of the bitmask (int32 rows) or None, allowed
#  counts made by the engine thread or None (then counted here), vocab, speculative rows
#  [(request id, first row, row count)] or None, with allowed sets, the RowsBacklog, and
#  (pool, tensor) when the rows are vLLM's own filled tensor, handed back to the pool once
#  read (vllm/grammar_tap.py BitmaskPool), else None)
ROWS = 10
# (KIND, time_ns, "", [(request id, step, tokens, accepted, terminated[, drafted, accepted
#  drafts, rolled-back drafts]), ...], level, vocab): the steps accepted since the last seal
STEPS = 11


class EventConverter:
    def __init__(self, settings: HookSettings, policy: CapturePolicy) -> None:
        self.settings = settings
        self.policy = policy
        self.allowed_sets = AllowedSetRecorder(settings.allowed_set_step_cap(),
                                               settings.allowed_sets_trail_max_bytes)
        # A columnar message stays under a quarter of a batch (so it is never cut to fit).
        self.frames = StepFrames(self.allowed_sets, settings.max_batch_bytes // 4)

    def convert(self, raw: tuple[Any, ...]) -> list[pb.Event]:
        """The events of one raw event, in order: none (ROWS), the columnar steps of a STEPS
        event, a summary after its request's held last step, or one event."""
        kind = raw[0]
        if kind == STEPS:
            return self.frames.steps(raw)
        if kind == ROWS:
            self.frames.rows(raw)
            return []
        if kind == SO_SUMMARY:
            held, figures = self.frames.finish(raw[2])
            event = self.to_proto(raw)
            if figures is not None:
                s = event.so_summary
                n, total, s.allowed_tokens_min, s.allowed_tokens_max = figures
                s.allowed_tokens_mean = total / n
            held.append(event)
            return held
        return [self.to_proto(raw)]

    def to_proto(self, raw: tuple[Any, ...]) -> pb.Event:
        kind = raw[0]
        event = pb.Event(time_unix_nano=raw[1], request_id=raw[2])
        if kind == LIFECYCLE:
            lc = event.lifecycle
            lc.phase = raw[3]
            lc.num_prompt_tokens = raw[4]
            lc.num_output_tokens = raw[5]
            lc.finish_reason = raw[6]
            lc.status = raw[7]
            lc.max_tokens = raw[8]
            lc.structured_output = raw[9]
            if len(raw) > 10:
                lc.external_request_id = raw[10]
            if len(raw) > 13:
                fill_added(lc, raw[11], raw[12], raw[13], self.policy,
                           self.settings.capture_prompt)
        elif kind == GRAMMAR:
            gc = event.grammar_compiled
            gc.backend, gc.spec_type, gc.compile_ms, gc.error, gc.spec_sha256 = raw[3:8]
            gc.spec, gc.spec_size = raw[8:10]
        elif kind == STEP:
            st = event.so_step
            st.step = raw[3]
            st.accepted_tokens.extend(raw[4])
            st.allowed_tokens = raw[5]
            st.accepted = raw[6]
            st.terminated = raw[7]
            st.vocab_size = raw[9]
            if raw[8] is not None:
                self.allowed_sets.record(st, raw[2], raw[8], raw[9])
            st.allowed_per_token.extend(raw[10])
            st.drafted_tokens, st.accepted_draft_tokens, st.rolled_back_draft_tokens = raw[11:14]
        elif kind == SO_SUMMARY:
            s = event.so_summary
            (
                s.backend,
                s.steps,
                s.accepted_tokens,
                s.rejected_tokens,
                s.allowed_tokens_min,
                s.allowed_tokens_max,
                s.allowed_tokens_mean,
                s.terminated,
                s.rollbacks,
                s.first_rejected_token,
                s.first_rejected_step,
                s.drafted_tokens,
                s.accepted_draft_tokens,
                s.draft_rollbacks,
                s.rolled_back_draft_tokens,
                s.rejection_fate,
            ) = raw[3:19]
            self.allowed_sets.finish(s, raw[2])
        elif kind == STATS:
            event.engine_stats.CopyFrom(pb.EngineStats(**raw[3]))
        elif kind in (HTTP, HTTP_UNPARSED):
            fields = (dict(raw[3]) if kind == HTTP
                      else complete_http_fields(raw[3], raw[4], raw[5]))
            settings, policy = self.settings, self.policy
            if settings.signals:  # on the text as sent, before the policy hashes it
                fields.update(signal_fields(fields, settings.signals_max_chars))
            fields["prompt"] = policy.apply(settings.capture_prompt, fields.get("prompt", ""))
            fields["output"] = policy.apply(settings.capture_output, fields.get("output", ""))
            fields["client_ip"] = policy.apply(
                settings.capture_client_ip, fields.get("client_ip", "")
            )
            fields["capture_policy"] = (
                f"prompt={settings.capture_prompt},output={settings.capture_output},"
                f"client_ip={settings.capture_client_ip}"
            )
            event.http.CopyFrom(pb.HttpRequest(**fields))
        elif kind == ADMIN_UNPARSED:
            fields = complete_admin_fields(raw[3], raw[4], raw[5], raw[6])
            fields["client_ip"] = self.policy.apply(self.settings.capture_client_ip,
                                                    fields.get("client_ip", ""))
            event.admin.CopyFrom(pb.AdminAction(**fields))
        elif kind == CUSTOM:
            # Field added by the wire contract's CustomEvent; the API refuses before offering
            # when the generated code lacks it, so this is never reached without it.
            custom = event.custom
            custom.name = raw[3]
            custom.attributes.update(raw[4])
        else:
            raise ValueError(f"unknown raw event kind {kind!r}")
        return event


def signal_fields(fields: dict[str, Any], max_chars: int) -> dict[str, Any]:
    """The content-signal fields of an HTTP event's fields; none when the scan fails (counted
    as the hook's internal error `signals`, and the record carries content_signals null): a
    bug in a pattern must not cost the request its audit record."""
    try:
        return content_signal_fields(str(fields.get("prompt") or ""),
                                     str(fields.get("output") or ""), max_chars)
    except Exception as exc:
        ERRORS.record("signals", exc)
        return {}
