"""vLLM's hook points and `install()`, which patches them (called by `vllm_hooks.register()`).

The version notes below are the map of where the hook meets vLLM; each point's code is in its
own module of this room (named in brackets), and a vLLM upgrade should touch this room alone.
`install()` patches the engine-side points (scheduler, which also wraps structured output, and
the offline stat-logger wiring); the API server's two (API-key check, socket peer) are reached
by `vllm_hooks.middleware` in its own process, on first use.

Hook points (vLLM 0.32, CPU build; line numbers drift):

- Scheduler (`scheduler_patch`): `vllm.v1.engine.core.EngineCore.__init__` calls
  `load_general_plugins()` *first*, then builds the scheduler. Patching `EngineCore.__init__`
  from `register()` would be too late for the running construction, so we patch
  `Scheduler.__init__` (vllm.v1.core.sched.scheduler), whose instance is created afterwards in
  the same process, and wrap the *instance*: `add_request` (ADDED), `schedule` (SCHEDULED /
  RESUMED / PREEMPTED from SchedulerOutput's `scheduled_new_reqs`,
  `scheduled_cached_reqs.resumed_req_ids`, `preempted_req_ids`) and `_free_request` (every
  finish: stop, length, abort, error — aborts arrive through `finish_requests`, which calls it
  too).
- Structured output (`structured_output_patch`; EngineCore process):
  `StructuredOutputManager._create_grammar` (compile time, backend, spec type, errors) returns
  our delegating proxy (`grammar_tap`); `grammar_bitmask` returns the int32 array whose rows
  we popcount once per step. Rows: per structured request in
  `structured_output_request_ids` order, one per scheduled speculative token (-1 padding
  included), then the bonus row. The k-th token the engine accepts in a step was sampled from
  the request's row k (the rejection sampler keeps drafts up to the first mismatch, then
  samples one token from the next row), so each accepted token gets the count of its own row.
  While filling, vLLM advances the grammar over the drafts and `rollback()`s them all, then
  advances again over those the engine accepted: draft bookkeeping, never a rejection; what
  stays rolled back (the drafts the engine rejected) is counted as such. A token the grammar refuses in
  `Scheduler.update_from_output` finishes the request with FINISHED_ERROR.
- Stats (`stat_logger`, `offline_stat_logger_patch`): `StatLoggerBase` subclasses come from
  the `vllm.stat_logger_plugins` entry point in `vllm serve`; the offline `LLM` loads no
  plugins there, so `StatLoggerManager.__init__` is wrapped to add ours (de-duplicated).
- API-key check (`api_key_check`; `vllm serve --api-key` or `VLLM_API_KEY`; the CLI wins):
  `vllm.entrypoints.serve.middleware.register.init_entrypoints_middleware` adds
  `AuthenticationMiddleware(tokens=...)` (serve/middleware/authenticate.py) only when a key is
  configured. It checks requests whose path (root_path removed) starts with `GUARDED_PREFIX`
  ("/v1", "/v2", "/inference", "/cohere"), except OPTIONS, and answers 401 itself. Our
  middleware is added after it (`--middleware`), so it is outside it and sees that 401;
  `vllm_key_check` reads the app's `user_middleware` to know whether the check runs at all.
- The socket peer (`socket_peer_patch`): uvicorn (which `vllm serve` runs with its defaults:
  proxy_headers on, FORWARDED_ALLOW_IPS or 127.0.0.1) replaces `scope["client"]` with an
  X-Forwarded-For address when the peer is in its own list, before any middleware runs, so on
  the loopback anyone could pick the "peer" the hook's trust decision rests on. `keep_socket_peer` wraps
  `uvicorn.middleware.proxy_headers.ProxyHeadersMiddleware.__call__` to keep the TCP peer under
  identity.SOCKET_PEER_KEY first; the hook then applies VLLM_AUDIT_TRUSTED_PROXIES itself.
- Request ids: the API server uses `chatcmpl-<X-Request-Id>` / `cmpl-<X-Request-Id>`, and
  `InputProcessor.assign_request_id` appends `-<8 random chars>`; the agent correlates on that.
  The caller's id stays on `EngineCoreRequest.external_req_id`, which the engine core's
  `Request` drops: `request_id_patch` wraps `Request.from_engine_core_request` to keep it
  for the ADDED event (offline, it is the `RequestOutput.request_id` the user holds).
- Provenance (`provenance_patch`): the scheduler's construction starts the tracker (the
  model's files hashed on its own thread); `EngineCore.add_lora`/`remove_lora`,
  `collective_rpc` with a weight-changing method and `set_weight_version` (utility calls, not
  per step) change it. `add_request` hands the snapshot, `request.lora_request` and
  `request.sampling_params` (defaults applied by then) to the sender thread, which reads them.
- Replay (`replay_backends`, for `replay_grammar`): vLLM's backend classes compile a recorded
  grammar outside any engine, as `StructuredOutputManager` does; nothing is patched.
"""

from __future__ import annotations

from vllm_hooks.vllm.offline_stat_logger_patch import patch_stat_logger_manager
from vllm_hooks.vllm.provenance_patch import patch_engine_core
from vllm_hooks.vllm.request_id_patch import patch_request_ids
from vllm_hooks.vllm.scheduler_patch import patch_scheduler_init

__all__ = ["install"]

_installed = False


def install() -> None:
    """Patches vLLM classes. Called once per process by register() under its lock."""
    global _installed
    if _installed:
        return
    _installed = True
    patch_scheduler_init()
    patch_request_ids()
    patch_stat_logger_manager()
    patch_engine_core()
