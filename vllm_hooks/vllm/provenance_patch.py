"""Patch targets for model provenance (engine process): what vLLM serves, and its changes.

- At the scheduler's construction (`scheduler_patch`), `start_provenance` reads vLLM's
  `ModelConfig` (model, tokenizer, revision, dtype, quantization) and starts the tracker's
  thread, which hashes the weights and tokenizer files (events/digests.py) off vLLM's path.
- `EngineCore.add_lora` / `remove_lora` (the engine side of /v1/load_lora_adapter and
  /v1/unload_lora_adapter, and of `LLM.generate(lora_request=...)`'s first use): the adapter
  table, its files hashed on the thread.
- `EngineCore.collective_rpc` with a weight-changing method (the engine side of
  /update_weights, /finish_weight_update and RL frameworks' weight syncs) and
  `EngineCore.set_weight_version` (/update_weight_version): the weights in memory differ from
  the files hashed at start; later records say so (`weight_updates`, `weight_version`).

These are utility calls, never on the per-step path. The class methods are patched at
`install()`, which vLLM runs inside `EngineCore.__init__` (load_general_plugins), before any of
them can be called.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from vllm.v1.engine.core import EngineCore

from vllm_hooks.errors import ERRORS
from vllm_hooks.events.digests import DigestCache
from vllm_hooks.events.provenance import ProvenanceTracker
from vllm_hooks.runtime import HookRuntime

#: collective_rpc methods after which the weights in memory are not the files read at start.
WEIGHT_METHODS = frozenset({"update_weights", "finish_weight_update", "load_weights",
                            "reload_weights", "update_weights_from_disk",
                            "update_weights_from_tensor", "update_weights_from_ipc"})

_tracker: ProvenanceTracker | None = None


def tracker() -> ProvenanceTracker | None:
    return _tracker


def _local_dir(ref: str, revision: str | None) -> Path | None:
    """A local directory for vLLM's model (or tokenizer) argument: the path itself, else the
    hub cache's snapshot (never a download)."""
    if not ref:
        return None
    if os.path.isdir(ref):
        return Path(ref).resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, revision=revision, local_files_only=True))
    except Exception:
        return None


def start_provenance(vllm_config: Any, rt: HookRuntime) -> ProvenanceTracker:
    """The process's tracker, started once (a second scheduler in the process reuses it)."""
    global _tracker
    if _tracker is not None:
        return _tracker
    import vllm

    mc = vllm_config.model_config
    revision = getattr(mc, "revision", None)
    base = {"model": str(mc.model), "revision": str(revision or ""),
            "dtype": str(getattr(mc, "dtype", "")),
            "quantization": str(getattr(mc, "quantization", None) or ""),
            "vllm_version": str(getattr(vllm, "__version__", ""))}
    tokenizer = str(getattr(mc, "tokenizer", "") or "")
    tok_revision = getattr(mc, "tokenizer_revision", None) or revision
    _tracker = ProvenanceTracker(
        base, str(mc.model), tokenizer if tokenizer != str(mc.model) else "",
        lambda ref: _local_dir(ref, tok_revision if ref == tokenizer else revision),
        DigestCache(rt.settings.digest_cache))
    _tracker.start()
    return _tracker


def patch_engine_core() -> None:
    originals = {name: getattr(EngineCore, name) for name in
                 ("add_lora", "remove_lora", "collective_rpc", "set_weight_version")}

    @functools.wraps(originals["add_lora"])
    def add_lora(self: Any, lora_request: Any, *args: Any, **kwargs: Any) -> Any:
        out = originals["add_lora"](self, lora_request, *args, **kwargs)
        t = _tracker
        if t is not None:
            try:
                t.adapter_loaded(str(lora_request.lora_name), int(lora_request.lora_int_id),
                                 str(lora_request.lora_path or ""))
            except Exception as exc:
                ERRORS.record("provenance.add_lora", exc)
        return out

    @functools.wraps(originals["remove_lora"])
    def remove_lora(self: Any, lora_id: int, *args: Any, **kwargs: Any) -> Any:
        out = originals["remove_lora"](self, lora_id, *args, **kwargs)
        t = _tracker
        if t is not None:
            try:
                t.adapter_removed(int(lora_id))
            except Exception as exc:
                ERRORS.record("provenance.remove_lora", exc)
        return out

    @functools.wraps(originals["collective_rpc"])
    def collective_rpc(self: Any, method: Any, *args: Any, **kwargs: Any) -> Any:
        out = originals["collective_rpc"](self, method, *args, **kwargs)
        t = _tracker
        if t is not None and isinstance(method, str) and method in WEIGHT_METHODS:
            try:
                t.weights_changed()
            except Exception as exc:
                ERRORS.record("provenance.collective_rpc", exc)
        return out

    @functools.wraps(originals["set_weight_version"])
    def set_weight_version(self: Any, weight_version: str, *args: Any, **kwargs: Any) -> Any:
        out = originals["set_weight_version"](self, weight_version, *args, **kwargs)
        t = _tracker
        if t is not None:
            try:
                t.weight_version(str(weight_version))
            except Exception as exc:
                ERRORS.record("provenance.weight_version", exc)
        return out

    EngineCore.add_lora = add_lora
    EngineCore.remove_lora = remove_lora
    EngineCore.collective_rpc = collective_rpc
    EngineCore.set_weight_version = set_weight_version
