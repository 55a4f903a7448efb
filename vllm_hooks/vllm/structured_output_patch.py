"""Patch target: vLLM's `StructuredOutputManager` — grammar compiles and the per-step bitmask.

`_create_grammar` is wrapped to time each compile (backend, spec type, errors: one GRAMMAR event)
and to hand vLLM our delegating grammar proxy (`grammar_tap`); `grammar_bitmask` is wrapped to
hand the int32 bitmask vLLM fills once per engine step to the tap (from level key-events on:
one copy per engine step, counted and encoded on the sender thread). The manager is an
instance attribute of the scheduler, wrapped per instance by `scheduler_patch`; nothing here
imports vLLM.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from vllm_hooks.config.levels import Level
from vllm_hooks.errors import ERRORS
from vllm_hooks.events import raw_events as raw
from vllm_hooks.vllm.grammar_tap import (
    AuditedGrammar,
    BitmaskPool,
    BitmaskTap,
    TimedAuditedGrammar,
)

_SUMMARY = int(Level.SUMMARY)
_KEY_EVENTS = int(Level.KEY_EVENTS)

_SPEC_TYPES = {
    "JSON": "json",
    "JSON_OBJECT": "json_object",
    "REGEX": "regex",
    "GRAMMAR": "grammar",
    "CHOICE": "choice",
    "STRUCTURAL_TAG": "structural_tag",
}


def wrap_structured_output_manager(manager: Any, tap: BitmaskTap) -> None:
    rt = tap.runtime
    tap.pool = BitmaskPool(manager, rt.buffer.wakeup)
    offer = rt.buffer.offer
    settings, cap = rt.settings, rt.settings.grammar_max_bytes
    timer = rt.timer
    orig_create = manager._create_grammar
    orig_bitmask = manager.grammar_bitmask
    if timer is not None:
        orig_create, orig_bitmask = timer.vllm_region(orig_create), timer.vllm_region(orig_bitmask)

    def _create_grammar(request: Any) -> Any:
        if rt.level < _SUMMARY:
            return orig_create(request)
        start = time.perf_counter()
        include = settings.keeps_grammar(rt.level)  # the text at full and up: a proof
        try:
            grammar = orig_create(request)
        except Exception as exc:
            try:
                offer(_grammar_event(request, start, repr(exc), include, cap))
            except Exception as inner:
                ERRORS.record("grammar.create.error_event", inner)
            raise
        try:
            offer(_grammar_event(request, start, "", include, cap))
            backend = _backend_name(request)
            if timer is None:
                return AuditedGrammar(grammar, request.request_id, tap, backend)
            return TimedAuditedGrammar(grammar, request.request_id, tap, backend, timer)
        except Exception as exc:
            ERRORS.record("grammar.create", exc)
            return grammar

    def grammar_bitmask(
        requests: dict[str, Any],
        structured_output_request_ids: list[str],
        scheduled_spec_decode_tokens: dict[str, list[int]],
    ) -> Any:
        tap.filling = True
        try:
            bitmask = orig_bitmask(
                requests, structured_output_request_ids, scheduled_spec_decode_tokens
            )
        finally:
            tap.filling = False
        level = rt.level
        if tap.entries:
            tap.seal()  # the previous engine step's steps, before this step's rows
        tap.capture = False
        # Rows are walked at summary level only under speculative decoding (draft counts);
        # from level key-events on the engine step's rows go to the sender (tap.snapshot).
        if bitmask is not None and (
            level >= _KEY_EVENTS or (level >= _SUMMARY and scheduled_spec_decode_tokens)
        ):
            try:
                spec_rows = None
                if scheduled_spec_decode_tokens:
                    spec_rows = _request_rows(requests, structured_output_request_ids,
                                              scheduled_spec_decode_tokens, bitmask.shape[0])
                if level >= _KEY_EVENTS:
                    # No drafts: the i-th structured request has row i alone.
                    tap.snapshot(bitmask, structured_output_request_ids, spec_rows)
            except Exception as exc:
                ERRORS.record("grammar.bitmask", exc)
        return bitmask

    if timer is None:
        manager._create_grammar = _create_grammar
        manager.grammar_bitmask = grammar_bitmask
    else:
        manager._create_grammar = timer.hook_region(_create_grammar)
        manager.grammar_bitmask = timer.hook_region(grammar_bitmask)


def _request_rows(
    requests: dict[str, Any],
    request_ids: list[str],
    spec_tokens: dict[str, list[int]],
    n_rows: int,
) -> list[tuple[str, int, int]]:
    """(request id, first row, row count) per request, in the manager's row order; also sets
    each grammar's count of real (non-padding) drafts for the coming step. A request has one
    row per scheduled draft token and one bonus row; the k-th token the engine accepts this
    step is sampled from row first + k."""
    rows: list[tuple[str, int, int]] = []
    index = 0
    for req_id in request_ids:
        drafts = spec_tokens.get(req_id, ())
        count = min(len(drafts) + 1, n_rows - index)
        if count <= 0:
            break
        grammar = getattr(requests[req_id].structured_output_request, "_grammar", None)
        if isinstance(grammar, AuditedGrammar):
            grammar.pending_drafted = sum(1 for t in drafts if t != -1)
        rows.append((req_id, index, count))
        index += len(drafts) + 1
    return rows


def _backend_name(request: Any) -> str:
    params = request.sampling_params.structured_outputs
    return str(getattr(params, "_backend", None) or "unknown")


def _grammar_event(request: Any, start: float, error: str,
                   include_grammar: bool = False, max_bytes: int = 0) -> tuple[Any, ...]:
    so = request.structured_output_request
    spec_type, spec = so.structured_output_key
    name = getattr(spec_type, "name", str(spec_type))
    data = str(spec).encode()
    text = ""
    if include_grammar:
        # Cut on a UTF-8 boundary so the kept prefix stays valid text.
        text = data[:max_bytes].decode("utf-8", "ignore")
    return (
        raw.GRAMMAR,
        time.time_ns(),
        request.request_id,
        _backend_name(request),
        _SPEC_TYPES.get(name, name.lower()),
        (time.perf_counter() - start) * 1000.0,
        error,
        hashlib.sha256(data).hexdigest(),
        text,
        len(data),
    )
