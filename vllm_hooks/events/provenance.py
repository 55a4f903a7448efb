"""What model answers a request: the engine process's provenance, kept current by one
background thread, and the per-request parts (LoRA adapter, sampling parameters) read from
vLLM's objects on the sender thread.

The engine thread only reads `ProvenanceTracker.current` (an immutable snapshot) and hands
vLLM's own `SamplingParams` and `LoRARequest` objects over in the ADDED tuple; hashing the
weights, the tokenizer and adapters happens on the tracker's thread (`digests`), building
the messages on the sender thread (`fill_added`). A change (an adapter loaded or removed,
weights changed in memory, a new weight version) replaces the snapshot, so later requests
name it; requests already added keep the one they were added under.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vllm_audit.v1 import events_pb2 as pb
from vllm_hooks.events.capture import CapturePolicy
from vllm_hooks.events.digests import (
    Digest,
    DigestCache,
    adapter_files,
    digest_files,
    tokenizer_files,
    weight_files,
)

logger = logging.getLogger("vllm_hooks")

PENDING = "pending"


def hook_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vllm-audit")
    except PackageNotFoundError:
        return ""


@dataclass(frozen=True)
class Snapshot:
    """One state of the provenance; `wire` is its ModelProvenance, serialised once."""

    fields: dict[str, Any]
    #: Adapter name -> LoraAdapter fields.
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)
    wire: bytes = b""

    def with_fields(self, **changes: Any) -> Snapshot:
        merged = {**self.fields, **changes}
        return Snapshot(merged, self.adapters, pb.ModelProvenance(**merged).SerializeToString())


def revision_of(model_dir: Path | None, configured: str) -> str:
    """--revision, else the hub snapshot's commit, else the config's own note of one."""
    if configured:
        return configured
    if model_dir is None:
        return ""
    if model_dir.parent.name == "snapshots":
        return model_dir.name
    with contextlib.suppress(OSError, ValueError, AttributeError):
        config = json.loads((model_dir / "config.json").read_text())
        return str(config.get("revision") or config.get("_commit_hash") or "")
    return ""


class ProvenanceTracker:
    """The engine process's provenance (see the module docstring). `resolve` turns vLLM's model
    argument into a local directory (a hub id through the local cache) or None."""

    def __init__(self, base: dict[str, Any], model_ref: str, tokenizer_ref: str,
                 resolve: Callable[[str], Path | None], cache: DigestCache) -> None:
        self._resolve = resolve
        self._model_ref, self._tokenizer_ref = model_ref, tokenizer_ref
        self._cache = cache
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self.current = Snapshot({}).with_fields(
            **base, hook_version=hook_version(), weights_digest_status=PENDING)
        self._thread: threading.Thread | None = None

    # -- the thread --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vllm-audit-provenance",
                                        daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        try:
            self._digest_model()
        except Exception as exc:
            logger.warning("vllm-audit: model digest failed: %s", exc)
            self._update(weights_digest_status=f"error: {exc}"[:200])
        while (job := self._jobs.get()) is not None:
            try:
                if job[0] == "adapter":
                    self._digest_adapter(*job[1])
            except Exception as exc:
                logger.warning("vllm-audit: adapter digest failed: %s", exc)
        self._save_cache()

    def _digest_model(self) -> None:
        model_dir = self._resolve(self._model_ref)
        tok_dir = self._resolve(self._tokenizer_ref) if self._tokenizer_ref else model_dir
        weights = digest_files(weight_files(model_dir), self._cache) if model_dir else None
        tokenizer = digest_files(tokenizer_files(tok_dir), self._cache) if tok_dir else None
        w = weights or Digest("", 0, 0, "unavailable", 0.0)
        self._update(model_path=str(model_dir or ""), weights_sha256=w.sha256,
                     weights_files=w.files, weights_bytes=w.size, weights_digest_status=w.status,
                     weights_digest_ms=w.ms,
                     tokenizer_sha256=tokenizer.sha256 if tokenizer else "",
                     revision=revision_of(model_dir, str(self.current.fields.get("revision", ""))))
        self._save_cache()

    def _digest_adapter(self, name: str, path: str) -> None:
        directory = self._resolve(path) if path else None
        d = digest_files(adapter_files(directory), self._cache) if directory else None
        with self._lock:
            snap = self.current
            entry = snap.adapters.get(name)
            if entry is None or entry.get("path") != path:
                return  # replaced or removed meanwhile: its own job answers for it
            adapters = {**snap.adapters, name: {
                **entry, "sha256": d.sha256 if d else "", "bytes": d.size if d else 0,
                "digest_status": d.status if d else "unavailable"}}
            self.current = replace(snap, adapters=adapters)
        self._save_cache()

    def _save_cache(self) -> None:
        try:
            self._cache.save()
        except OSError as exc:
            logger.warning("vllm-audit: cannot write the digest cache %s: %s",
                           self._cache.path, exc)

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self.current = self.current.with_fields(**changes)

    # -- changes, from vLLM's threads (never per step) -----------------------------------------
    def _bump(self, **changes: Any) -> None:
        """A change that later records must show: generation + 1."""
        generation = int(self.current.fields.get("generation", 0)) + 1
        self.current = self.current.with_fields(generation=generation, **changes)

    def adapter_loaded(self, name: str, adapter_id: int, path: str) -> None:
        with self._lock:
            snap = self.current
            known = snap.adapters.get(name)
            if known is not None and known.get("path") == path and known.get("sha256"):
                return
            self.current = replace(snap, adapters={**snap.adapters, name: {
                "name": name, "id": int(adapter_id), "path": path, "sha256": "",
                "bytes": 0, "digest_status": PENDING}})
            self._bump()
        self._jobs.put(("adapter", (name, path)))

    def adapter_removed(self, adapter_id: int) -> None:
        with self._lock:
            snap = self.current
            kept = {n: a for n, a in snap.adapters.items() if a.get("id") != adapter_id}
            if len(kept) != len(snap.adapters):
                self.current = replace(snap, adapters=kept)
                self._bump()

    def weights_changed(self) -> None:
        with self._lock:
            updates = int(self.current.fields.get("weight_updates", 0)) + 1
            self._bump(weight_updates=updates)

    def weight_version(self, version: str) -> None:
        with self._lock:
            self._bump(weight_version=str(version))

    def adapter_seen(self, lora: Any) -> None:
        """A request names an adapter not loaded through add_lora (vLLM loads it lazily)."""
        if lora is not None and lora.lora_name not in self.current.adapters:
            self.adapter_loaded(str(lora.lora_name), int(lora.lora_int_id or 0),
                                str(lora.lora_path or ""))


# -- the sender thread: vLLM's objects -> messages -----------------------------------------
def _num(value: Any, default: float = 0.0) -> float:
    return float(value) if value is not None else default


def fill_sampling(out: pb.SamplingParameters, sp: Any, policy: CapturePolicy,
                  stop_policy: str) -> None:
    """vLLM's SamplingParams as the engine holds it; stop strings under `stop_policy`."""
    out.temperature = _num(getattr(sp, "temperature", None))
    out.top_p = _num(getattr(sp, "top_p", None))
    out.top_k = int(getattr(sp, "top_k", 0) or 0)
    out.min_p = _num(getattr(sp, "min_p", None))
    seed = getattr(sp, "seed", None)
    out.seeded = seed is not None
    out.seed = int(seed or 0)
    out.max_tokens = int(getattr(sp, "max_tokens", 0) or 0)
    out.min_tokens = int(getattr(sp, "min_tokens", 0) or 0)
    out.stop.extend(policy.apply(stop_policy, str(s)) for s in (getattr(sp, "stop", None) or ()))
    out.stop_token_ids = len(getattr(sp, "stop_token_ids", None) or ())
    out.presence_penalty = _num(getattr(sp, "presence_penalty", None))
    out.frequency_penalty = _num(getattr(sp, "frequency_penalty", None))
    out.repetition_penalty = _num(getattr(sp, "repetition_penalty", None), 1.0)
    out.logit_bias = bool(getattr(sp, "logit_bias", None))
    out.n = int(getattr(sp, "n", 1) or 1)
    out.structured_output = getattr(sp, "structured_outputs", None) is not None
    logprobs = getattr(sp, "logprobs", None)
    out.logprobs = -1 if logprobs is None else int(logprobs)
    out.allowed_token_ids = bool(getattr(sp, "allowed_token_ids", None))
    out.bad_words = bool(getattr(sp, "bad_words", None))
    out.ignore_eos = bool(getattr(sp, "ignore_eos", False))


def fill_added(lc: pb.RequestLifecycle, snapshot: Snapshot | None, lora: Any, sp: Any,
               policy: CapturePolicy, stop_policy: str) -> None:
    """The ADDED event's provenance, adapter and sampling parameters."""
    if snapshot is not None:
        lc.provenance.MergeFromString(snapshot.wire)
    if lora is not None:
        name = str(getattr(lora, "lora_name", "") or "")
        known = snapshot.adapters.get(name) if snapshot is not None else None
        adapter = lc.lora_adapter
        if known is not None:
            adapter.CopyFrom(pb.LoraAdapter(**known))
        else:
            adapter.name, adapter.digest_status = name, PENDING
            adapter.path = str(getattr(lora, "lora_path", "") or "")
        adapter.id = int(getattr(lora, "lora_int_id", 0) or 0)
    if sp is not None:
        fill_sampling(lc.sampling, sp, policy, stop_policy)
