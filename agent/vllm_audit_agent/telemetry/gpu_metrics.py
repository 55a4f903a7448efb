"""GPU families, named and labelled like the DCGM exporter's, from the sampler's snapshot.

ECC totals are exported as gauges under the DCGM exporter's names: the value is NVML's own
running total, and a `counter` type would oblige the `_total` suffix rewrite that breaks the
names DCGM dashboards query. `increase()` works on them all the same.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from vllm_audit_agent.telemetry.gpu import FIELDS, READ_ERROR_FIELDS, XID, GpuSampler

#: The DCGM exporter's label names.
DCGM_LABELS = ["gpu", "UUID", "device", "modelName", "Hostname"]


def gpu_metrics(gpu: GpuSampler, hostname: str, pids: Mapping[int, tuple[str, str]],
                scope: Collection[str] | None = None) -> Iterator[Metric]:
    """`pids`: pid -> (source id, model) of the hook processes connected to this agent;
    `scope`: the UUIDs of the GPUs to export (None: every device NVML sees)."""
    yield GaugeMetricFamily("vllm_audit_gpu_available",
                            "1 when GPU telemetry is available (NVML opened)",
                            value=1 if gpu.available else 0)
    errors = CounterMetricFamily("vllm_audit_gpu_read_errors",
                                 "Failed NVML reads by field (not-supported fields excluded)",
                                 labels=["field"])
    for name in READ_ERROR_FIELDS:
        errors.add_metric([name], gpu.read_errors[name])
    yield errors
    snapshot = [r for r in gpu.snapshot if scope is None or r.uuid in scope]
    yield GaugeMetricFamily("vllm_audit_gpu_devices_exported",
                            "GPUs exported (with --gpu-scope pod: those this pod's vLLM "
                            "processes reported; 0 until they connect)", value=len(snapshot))
    families = {name: GaugeMetricFamily(name, doc, labels=DCGM_LABELS)
                for name, doc in FIELDS.items()}
    xid = GaugeMetricFamily(XID, "Value of the last XID error encountered.", labels=DCGM_LABELS)
    xids = CounterMetricFamily("vllm_audit_gpu_xid_errors", "XID errors seen, by XID code",
                               labels=[*DCGM_LABELS, "xid"])
    process_memory = GaugeMetricFamily(
        "vllm_audit_gpu_process_memory_used_bytes",
        "GPU memory used by each vLLM process connected to this agent",
        labels=[*DCGM_LABELS, "pid", "source", "model"])
    for r in snapshot:
        labels = [str(r.index), r.uuid, f"nvidia{r.index}", r.name, hostname]
        for name, value in r.fields.items():
            families[name].add_metric(labels, value)
        # Like the DCGM exporter: 0 until the first XID.
        xid.add_metric(labels, gpu.last_xid.get(r.index, 0))
        for (index, code), n in sorted(gpu.xid_counts.items()):
            if index == r.index:
                xids.add_metric([*labels, str(code)], n)
        for pid, used in sorted(r.processes.items()):
            if pid in pids:
                source, model = pids[pid]
                process_memory.add_metric([*labels, str(pid), source, model], used)
    yield from families.values()
    yield xid
    yield xids
    yield process_memory
