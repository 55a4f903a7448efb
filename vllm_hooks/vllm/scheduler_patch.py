"""Patch target: vLLM's `Scheduler` — one lifecycle event per request transition.

`Scheduler.__init__` is patched (at install) so every scheduler built afterwards in the process
has its *instance* methods wrapped: `add_request` (ADDED, with the caller's request id that
`request_id_patch` noted), `schedule` (SCHEDULED / RESUMED /
PREEMPTED), `_free_request` (every finish) and `update_from_output` (the structured-output
steps it accepted go to the sender when it returns). Its structured-output manager is handed to
`structured_output_patch` from here, since the scheduler is where the hook first sees it.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

from vllm_hooks import fail_open_in_env
from vllm_hooks.config.levels import Level
from vllm_hooks.errors import ERRORS
from vllm_hooks.events import raw_events as raw
from vllm_hooks.events.self_timing import SelfTimer
from vllm_hooks.runtime import HookRuntime, get_runtime
from vllm_hooks.vllm.backend_check import check_backend
from vllm_hooks.vllm.grammar_tap import AuditedGrammar, BitmaskTap
from vllm_hooks.vllm.provenance_patch import start_provenance
from vllm_hooks.vllm.request_id_patch import external_id
from vllm_hooks.vllm.structured_output_patch import wrap_structured_output_manager

_SUMMARY = int(Level.SUMMARY)

ADDED, SCHEDULED, RESUMED, PREEMPTED = raw.ADDED, raw.SCHEDULED, raw.RESUMED, raw.PREEMPTED
FINISHED, ABORTED = raw.FINISHED, raw.ABORTED


def patch_scheduler_init() -> None:
    original = Scheduler.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if getattr(self, "_vllm_audit_wrapped", False):
            return  # a subclass calling super().__init__ already wrapped it
        # At engine start, where refusing is still an answer: a backend vLLM cannot load
        # would stop the engine on its first structured request (AuditStartupError).
        check_backend(getattr(self, "vllm_config", None), fail_open_in_env())
        try:
            wrap_scheduler(self, get_runtime("engine_core"))
        except Exception as exc:
            # The site name predates this module; the agent's error counters are keyed on it.
            ERRORS.record("adapter.wrap_scheduler", exc)

    Scheduler.__init__ = __init__


def wrap_scheduler(sched: Any, rt: HookRuntime) -> None:
    sched._vllm_audit_wrapped = True
    offer = rt.buffer.offer
    timer = rt.timer
    orig_add = sched.add_request
    orig_schedule = sched.schedule
    orig_free = sched._free_request
    # Provenance: a thread hashes the model's files; the engine thread reads its snapshot.
    provenance: Any = None
    try:
        provenance = start_provenance(sched.vllm_config, rt)
    except Exception as exc:
        ERRORS.record("provenance.start", exc)  # requests are still audited, without it
    if timer is not None:
        # VLLM_AUDIT_SELF_TIMING: vLLM's own methods clocked, subtracted from the hook's time.
        orig_add, orig_schedule, orig_free = (
            timer.vllm_region(f) for f in (orig_add, orig_schedule, orig_free))

    def add_request(request: Any) -> None:
        orig_add(request)
        if rt.level >= _SUMMARY:
            try:
                lora = request.lora_request
                if lora is not None and provenance is not None:
                    provenance.adapter_seen(lora)  # a dict lookup once known
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
                        external_id(request),
                        # read on the sender thread (events/provenance.py)
                        provenance.current if provenance is not None else None,
                        lora,
                        request.sampling_params,
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
        tap = BitmaskTap(rt, vocab_size)
        wrap_structured_output_manager(manager, tap)
        _seal_after_update(sched, tap, timer)


def _seal_after_update(sched: Any, tap: BitmaskTap, timer: SelfTimer | None) -> None:
    """The steps vLLM's update_from_output accepted go to the sender as it returns (waiting
    for the next bitmask would hold an idle engine's last steps back)."""
    orig_update = sched.update_from_output
    if timer is not None:
        orig_update = timer.vllm_region(orig_update)

    def update_from_output(*args: Any, **kwargs: Any) -> Any:
        out = orig_update(*args, **kwargs)
        if tap.entries:
            try:
                tap.seal()
            except Exception as exc:
                ERRORS.record("scheduler.update_from_output", exc)
        return out

    sched.update_from_output = (update_from_output if timer is None
                                else timer.hook_region(update_from_output))


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
