"""The only module that touches vLLM internals. A vLLM upgrade should touch this file alone.

Hook points (vLLM 0.32, CPU build; line numbers drift):

- `vllm.v1.engine.core.EngineCore.__init__` calls `load_general_plugins()` *first*, then builds
  the scheduler. Patching `EngineCore.__init__` from `register()` would be too late for the
  running construction, so we patch `Scheduler.__init__` (vllm.v1.core.sched.scheduler), whose
  instance is created afterwards in the same process, and wrap the *instance*:
  `add_request` (ADDED), `schedule` (SCHEDULED / RESUMED / PREEMPTED from SchedulerOutput's
  `scheduled_new_reqs`, `scheduled_cached_reqs.resumed_req_ids`, `preempted_req_ids`) and
  `_free_request` (every finish: stop, length, abort, error — aborts arrive through
  `finish_requests`, which calls it too).
- Structured output (EngineCore process): `StructuredOutputManager._create_grammar` (compile
  time, backend, spec type, errors) returns our delegating proxy; `grammar_bitmask` returns the
  int32 array whose rows we popcount once per step. Rows: per structured request in
  `structured_output_request_ids` order, one per scheduled speculative token (-1 padding
  included), then the bonus row. The k-th token the engine accepts in a step was sampled from
  the request's row k (the rejection sampler keeps drafts up to the first mismatch, then
  samples one token from the next row), so each accepted token gets the count of its own row.
  While filling, vLLM advances the grammar over the drafts and `rollback()`s them: that is
  draft bookkeeping (counted as such), never a rejection. A token the grammar refuses in
  `Scheduler.update_from_output` finishes the request with FINISHED_ERROR.
- Stats: `StatLoggerBase` subclasses come from the `vllm.stat_logger_plugins` entry point in
  `vllm serve`; the offline `LLM` loads no plugins there, so `StatLoggerManager.__init__` is
  wrapped to add ours (de-duplicated).
- API-key check (`vllm serve --api-key` or `VLLM_API_KEY`; the CLI wins):
  `vllm.entrypoints.serve.middleware.register.init_entrypoints_middleware` adds
  `AuthenticationMiddleware(tokens=...)` (serve/middleware/authenticate.py) only when a key is
  configured. It checks requests whose path (root_path removed) starts with `GUARDED_PREFIX`
  ("/v1", "/v2", "/inference", "/cohere"), except OPTIONS, and answers 401 itself. Our
  middleware is added after it (`--middleware`), so it is outside it and sees that 401;
  `vllm_key_check` reads the app's `user_middleware` to know whether the check runs at all.
- The socket peer: uvicorn (which `vllm serve` runs with its defaults: proxy_headers on,
  FORWARDED_ALLOW_IPS or 127.0.0.1) replaces `scope["client"]` with an X-Forwarded-For address
  when the peer is in its own list, before any middleware runs, so on the loopback anyone could
  pick the "peer" the hook's trust decision rests on. `keep_socket_peer` wraps
  `uvicorn.middleware.proxy_headers.ProxyHeadersMiddleware.__call__` to keep the TCP peer under
  identity.SOCKET_PEER_KEY first; the hook then applies VLLM_AUDIT_TRUSTED_PROXIES itself.
- Request ids: the API server uses `chatcmpl-<X-Request-Id>` / `cmpl-<X-Request-Id>`, and
  `InputProcessor.assign_request_id` appends `-<8 random chars>`; the agent correlates on that.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import time
from collections.abc import Callable
from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.metrics.loggers import StatLoggerBase, StatLoggerManager
from vllm.v1.request import RequestStatus

from vllm_hooks.config.settings import Level
from vllm_hooks.errors import ERRORS
from vllm_hooks.events import raw_events as raw
from vllm_hooks.events.self_timing import SelfTimer
from vllm_hooks.runtime import HookRuntime, get_runtime
from vllm_hooks.vllm.grammar_tap import AuditedGrammar, BitmaskTap, TimedAuditedGrammar

__all__ = ["StatLoggerBase", "install"]

_SUMMARY = int(Level.SUMMARY)
_KEY_EVENTS = int(Level.KEY_EVENTS)

ADDED, SCHEDULED, RESUMED, PREEMPTED = raw.ADDED, raw.SCHEDULED, raw.RESUMED, raw.PREEMPTED
FINISHED, ABORTED = raw.FINISHED, raw.ABORTED

_installed = False


def install() -> None:
    """Patches vLLM classes. Called once per process by register() under its lock."""
    global _installed
    if _installed:
        return
    _installed = True
    _patch_scheduler_init()
    _patch_stat_logger_manager()


# -- scheduler lifecycle ------------------------------------------------------------------
def _patch_scheduler_init() -> None:
    original = Scheduler.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if getattr(self, "_vllm_audit_wrapped", False):
            return  # a subclass calling super().__init__ already wrapped it
        try:
            wrap_scheduler(self, get_runtime("engine_core"))
        except Exception as exc:
            ERRORS.record("adapter.wrap_scheduler", exc)

    Scheduler.__init__ = __init__  # type: ignore[method-assign]


def wrap_scheduler(sched: Any, rt: HookRuntime) -> None:
    sched._vllm_audit_wrapped = True
    offer = rt.buffer.offer
    timer = rt.timer
    orig_add = sched.add_request
    orig_schedule = sched.schedule
    orig_free = sched._free_request
    if timer is not None:
        # VLLM_AUDIT_SELF_TIMING: vLLM's own methods clocked, subtracted from the hook's time.
        orig_add, orig_schedule, orig_free = (
            timer.vllm_region(f) for f in (orig_add, orig_schedule, orig_free))

    def add_request(request: Any) -> None:
        orig_add(request)
        if rt.level >= _SUMMARY:
            try:
                offer(
                    (
                        raw.LIFECYCLE,
                        time.time_ns(),
                        request.request_id,
                        ADDED,
                        request.num_prompt_tokens,
                        0,
                        "",
                        "",
                        request.max_tokens or 0,
                        request.use_structured_output,
                    )
                )
            except Exception as exc:
                ERRORS.record("scheduler.add_request", exc)

    def schedule(*args: Any, **kwargs: Any) -> Any:
        out = orig_schedule(*args, **kwargs)
        if rt.level >= _SUMMARY:
            try:
                _offer_schedule(out, offer)
            except Exception as exc:
                ERRORS.record("scheduler.schedule", exc)
        return out

    def _free_request(request: Any, *args: Any, **kwargs: Any) -> Any:
        if rt.level >= _SUMMARY:
            try:
                _offer_finished(request, offer)
            except Exception as exc:
                ERRORS.record("scheduler.free_request", exc)
        return orig_free(request, *args, **kwargs)

    if timer is None:
        sched.add_request = add_request
        sched.schedule = schedule
        sched._free_request = _free_request
    else:
        sched.add_request = timer.hook_region(add_request)
        sched._free_request = timer.hook_region(_free_request)
        sched.schedule = _counting_steps(timer.hook_region(schedule), timer)

    model_config = sched.vllm_config.model_config
    # Offline trails have no HTTP event: the batch's model field names the model for them.
    name = model_config.served_model_name or model_config.model
    rt.sender.model = str(name[0] if isinstance(name, (list, tuple)) else name)

    manager = getattr(sched, "structured_output_manager", None)
    if manager is not None:
        vocab_size = int(manager.vllm_config.model_config.get_vocab_size())
        wrap_structured_output_manager(manager, BitmaskTap(rt, vocab_size))


def _counting_steps(schedule: Any, timer: SelfTimer) -> Any:
    """Self-timing: counts engine steps and the requests each scheduled (outside the timed
    region: the counting is the benchmark's, not the hook's)."""

    def counted(*args: Any, **kwargs: Any) -> Any:
        out = schedule(*args, **kwargs)
        timer.step(len(out.num_scheduled_tokens))
        return out

    return counted


def _offer_schedule(out: Any, offer: Any) -> None:
    now = time.time_ns()
    for new in out.scheduled_new_reqs:
        offer((raw.LIFECYCLE, now, new.req_id, SCHEDULED, 0, 0, "", "", 0, False))
    for req_id in out.scheduled_cached_reqs.resumed_req_ids:
        offer((raw.LIFECYCLE, now, req_id, RESUMED, 0, 0, "", "", 0, False))
    for req_id in out.preempted_req_ids or ():
        offer((raw.LIFECYCLE, now, req_id, PREEMPTED, 0, 0, "", "", 0, False))


def _offer_finished(request: Any, offer: Any) -> None:
    status = request.status
    reason = request.get_finished_reason()
    phase = ABORTED if status == RequestStatus.FINISHED_ABORTED else FINISHED
    now = time.time_ns()
    so = request.structured_output_request
    grammar = getattr(so, "_grammar", None) if so is not None else None
    if isinstance(grammar, AuditedGrammar):
        grammar.finish(status.name)
    offer(
        (
            raw.LIFECYCLE,
            now,
            request.request_id,
            phase,
            request.num_prompt_tokens,
            request.num_output_tokens,
            str(reason) if reason is not None else "",
            status.name,
            request.max_tokens or 0,
            request.use_structured_output,
        )
    )


# -- structured output ----------------------------------------------------------------------
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
    offer = rt.buffer.offer
    include, cap = rt.settings.include_grammar, rt.settings.grammar_max_bytes
    timer = rt.timer
    orig_create = manager._create_grammar
    orig_bitmask = manager.grammar_bitmask
    if timer is not None:
        orig_create, orig_bitmask = timer.vllm_region(orig_create), timer.vllm_region(orig_bitmask)

    def _create_grammar(request: Any) -> Any:
        if rt.level < _SUMMARY:
            return orig_create(request)
        start = time.perf_counter()
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
        # Rows are walked at summary level only under speculative decoding (draft counts);
        # the popcount is paid from level key-events on (its steps carry allowed counts).
        if bitmask is not None and (
            level >= _KEY_EVENTS or (level >= _SUMMARY and scheduled_spec_decode_tokens)
        ):
            try:
                if not scheduled_spec_decode_tokens:
                    # No drafts (level key-events or more): request i has row i alone.
                    tap.assign_one_row_each(bitmask, requests, structured_output_request_ids)
                else:
                    rows = _request_rows(requests, structured_output_request_ids,
                                         scheduled_spec_decode_tokens, bitmask.shape[0])
                    if level >= _KEY_EVENTS:
                        tap.assign(bitmask, rows)
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
) -> list[tuple[Any, int, int]]:
    """(grammar, first row, row count) per request, in the manager's row order; also sets each
    grammar's count of real (non-padding) drafts for the coming step."""
    rows: list[tuple[Any, int, int]] = []
    index = 0
    for req_id in request_ids:
        drafts = spec_tokens.get(req_id, ())
        count = min(len(drafts) + 1, n_rows - index)
        if count <= 0:
            break
        grammar = getattr(requests[req_id].structured_output_request, "_grammar", None)
        if isinstance(grammar, AuditedGrammar):
            grammar.pending_drafted = sum(1 for t in drafts if t != -1)
        rows.append((grammar, index, count))
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


# -- stats ----------------------------------------------------------------------------------
def _patch_stat_logger_manager() -> None:
    original = StatLoggerManager.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        from vllm_hooks.vllm.stat_logger import AuditStatLogger

        try:
            custom = kwargs.get("custom_stat_loggers")
            if len(args) < 3:  # custom_stat_loggers is the third positional parameter
                factories = list(custom or [])
                if AuditStatLogger not in factories:
                    factories.append(AuditStatLogger)
                kwargs["custom_stat_loggers"] = factories
        except Exception as exc:
            ERRORS.record("adapter.stat_logger_manager", exc)
        original(self, *args, **kwargs)

    StatLoggerManager.__init__ = __init__  # type: ignore[method-assign]


# -- replay (vllm-audit replay): a recorded grammar compiled by vLLM's own backend ----------------
#: vLLM's backend class per structured-output backend name (as the hook records it).
_REPLAY_BACKENDS = {
    "xgrammar": ("vllm.v1.structured_output.backend_xgrammar", "XgrammarBackend"),
    "guidance": ("vllm.v1.structured_output.backend_guidance", "GuidanceBackend"),
    "outlines": ("vllm.v1.structured_output.backend_outlines", "OutlinesBackend"),
    "lm-format-enforcer": ("vllm.v1.structured_output.backend_lm_format_enforcer",
                           "LMFormatEnforcerBackend"),
}


class ReplayUnavailable(Exception):
    """The trail cannot be replayed here: unknown backend, or not the model that made it."""


def compile_grammar_for_replay(backend: str, spec_type: str, spec: str, model: str,
                               vocab_size: int) -> tuple[Any, Any]:
    """(compiled grammar, a one-row token bitmask) as vLLM's StructuredOutputManager makes
    them. Raises ReplayUnavailable (unknown backend, the model does not fit the trail) or
    ImportError (the backend is not installed); a grammar that does not compile raises as
    vLLM raises it."""
    import importlib

    from vllm.config import ModelConfig, StructuredOutputsConfig, VllmConfig
    from vllm.tokenizers import cached_tokenizer_from_config
    from vllm.v1.structured_output.backend_types import StructuredOutputOptions

    if backend not in _REPLAY_BACKENDS:
        raise ReplayUnavailable(f"unknown structured-output backend {backend!r}")
    module, name = _REPLAY_BACKENDS[backend]
    model_config = ModelConfig(model=model, tokenizer=model)
    if model_config.get_vocab_size() != vocab_size:
        raise ReplayUnavailable(f"the model has vocabulary {model_config.get_vocab_size()}, the trail "
                         f"{vocab_size}: not the model that generated it")
    config = VllmConfig(model_config=model_config,
                        structured_outputs_config=StructuredOutputsConfig(backend=backend))
    tokenizer = cached_tokenizer_from_config(model_config=model_config)
    impl = getattr(importlib.import_module(module), name)(config, tokenizer=tokenizer,
                                                          vocab_size=vocab_size)
    grammar = impl.compile_grammar(StructuredOutputOptions[spec_type.upper()], spec)
    return grammar, impl.allocate_token_bitmask(1)


# -- API-key check (vllm serve --api-key / VLLM_API_KEY) ------------------------------------------
def vllm_key_check(app: Any) -> Callable[[str, str, str], bool] | None:
    """For the ASGI app vLLM serves (`scope["app"]`): a function (method, path, root_path) ->
    whether vLLM checks an API key on that request; None when the app is not one this adapter
    knows (the audit then records the decision as unspecified rather than guess)."""
    from vllm.entrypoints.serve.middleware.authenticate import (
        GUARDED_PREFIX,
        AuthenticationMiddleware,
    )

    stack = getattr(app, "user_middleware", None)
    if stack is None:
        return None
    configured = any(
        isinstance(getattr(m, "cls", None), type) and issubclass(m.cls, AuthenticationMiddleware)
        and bool((getattr(m, "kwargs", None) or {}).get("tokens"))
        for m in stack)
    if not configured:
        return _never_checked

    def checked(method: str, path: str, root_path: str) -> bool:
        # AuthenticationMiddleware.__call__'s own rule.
        return method != "OPTIONS" and path.removeprefix(root_path).startswith(GUARDED_PREFIX)

    return checked


def _never_checked(method: str, path: str, root_path: str) -> bool:
    return False


# -- the TCP peer, before uvicorn's proxy-headers middleware rewrites scope["client"] ----------
_peer_kept = False


def keep_socket_peer() -> None:
    """Idempotent; called in the API server process by the middleware, whose stack Starlette
    builds on the first ASGI call, after uvicorn loaded its proxy-headers middleware (only
    loaded when it is on: not loaded, nothing rewrites the peer). The instance uvicorn already
    built is covered too: the method is looked up on the class at each call."""
    global _peer_kept
    module = sys.modules.get("uvicorn.middleware.proxy_headers")
    if _peer_kept or module is None:
        return
    _peer_kept = True
    from vllm_hooks.http.identity import SOCKET_PEER_KEY

    cls = module.ProxyHeadersMiddleware
    original = cls.__call__

    @functools.wraps(original)
    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "lifespan" and SOCKET_PEER_KEY not in scope:
            scope[SOCKET_PEER_KEY] = scope.get("client")
        await original(self, scope, receive, send)

    cls.__call__ = __call__
