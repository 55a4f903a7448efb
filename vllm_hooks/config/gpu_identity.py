"""Which GPUs this vLLM process was given, as NVML UUIDs, from the container's environment.

The NVIDIA device plugin (its default `uuid` device-ID strategy) sets NVIDIA_VISIBLE_DEVICES to
the UUIDs of the GPUs it allocated to the container; CUDA_VISIBLE_DEVICES may narrow that
further. Reading the environment, not CUDA or NVML, keeps the hook from initialising a GPU
context in the API server. Indices, `all` or nothing give no UUIDs: the agent then cannot
scope to this pod's devices (`--gpu-scope pod` exports none for this process).
"""

from __future__ import annotations

from collections.abc import Mapping

UUID_PREFIXES = ("GPU-", "MIG-")


def _uuids(value: str | None) -> tuple[str, ...]:
    items = [item.strip() for item in (value or "").split(",")]
    uuids = tuple(item for item in items if item.startswith(UUID_PREFIXES))
    # All or nothing: a list mixing indices and UUIDs cannot be resolved without NVML.
    return uuids if uuids and len(uuids) == len([i for i in items if i]) else ()


def visible_gpu_uuids(env: Mapping[str, str]) -> tuple[str, ...]:
    return _uuids(env.get("CUDA_VISIBLE_DEVICES")) or _uuids(env.get("NVIDIA_VISIBLE_DEVICES"))
