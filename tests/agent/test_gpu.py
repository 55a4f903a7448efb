"""The real NVML reader driven through a fake NVML library at the pynvml boundary: a healthy
device, a missing (not supported) field, a failing field, a lost device, XIDs, processes, and
what a real agent exports from it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.test_metrics import get
from tests.support.agent_harness import Hook, agent
from vllm_audit.v1 import events_pb2 as pb
from vllm_audit_agent.telemetry import gpu
from vllm_audit_agent.telemetry.fake_nvml import FakeDevice, FakeNvml
from vllm_audit_agent.telemetry.gpu import GpuSampler, GpuUnavailable, NvmlReader

HEALTHY = FakeDevice(uuid="GPU-aaaa", ecc={(True, True): 2, (False, False): 1},
                     throttle_reasons=0x4, processes={4242: 3 << 30, 999: 1 << 20})


def read(*devices: FakeDevice) -> gpu.GpuRead:
    reader = NvmlReader(FakeNvml(list(devices)))
    reader.open()
    try:
        return reader.read()
    finally:
        reader.close()


def test_a_healthy_device_reads_every_field_in_dcgm_units() -> None:
    result = read(HEALTHY)
    (device,) = result.devices
    assert (device.index, device.uuid, device.name) == (0, "GPU-aaaa", "NVIDIA Fake GPU")
    assert device.fields == {
        gpu.GPU_UTIL: 42, gpu.MEM_COPY_UTIL: 17, gpu.FB_USED: 1024, gpu.FB_FREE: 7168,
        gpu.GPU_TEMP: 55, gpu.POWER_USAGE: 120.0, gpu.ECC_SBE_VOL: 2, gpu.ECC_DBE_VOL: 0,
        gpu.ECC_SBE_AGG: 0, gpu.ECC_DBE_AGG: 1, gpu.THROTTLE: 4}
    assert device.processes == {4242: 3 << 30, 999: 1 << 20}
    assert not result.errors


def test_a_missing_field_is_absent_and_a_failing_one_is_counted_by_field() -> None:
    mig = FakeDevice(uuid="MIG-1", unsupported={"nvmlDeviceGetPowerUsage",
                                                "nvmlDeviceGetTotalEccErrors"},
                     failing={"nvmlDeviceGetTemperature"})
    result = read(mig)
    (device,) = result.devices
    assert gpu.POWER_USAGE not in device.fields and gpu.ECC_DBE_VOL not in device.fields
    assert gpu.GPU_TEMP not in device.fields
    assert device.fields[gpu.GPU_UTIL] == 42  # the rest still read
    assert result.errors == {gpu.GPU_TEMP: 1}  # NotSupported is not a failure


def test_a_failed_device_does_not_fail_the_others() -> None:
    result = read(FakeDevice(uuid="GPU-0"), FakeDevice(uuid="GPU-1", lost=True),
                  FakeDevice(uuid="GPU-2", failing={"nvmlDeviceGetComputeRunningProcesses"}))
    assert [(d.index, d.uuid) for d in result.devices] == [(0, "GPU-0"), (2, "GPU-2")]
    assert result.errors == {gpu.DEVICE: 1, gpu.PROCESSES: 1}


def test_without_a_gpu_the_sampler_reports_itself_unavailable(
        caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(GpuUnavailable, match="Driver Not Loaded"):
        NvmlReader(FakeNvml(present=False)).open()
    sampler = GpuSampler(NvmlReader(FakeNvml(present=False)), interval=60)
    with caplog.at_level(logging.INFO, logger="vllm_audit.agent"):
        sampler.start()
    assert not sampler.available
    assert [r.message for r in caplog.records if "GPU" in r.message] == [
        "GPU telemetry unavailable, continuing without it: NVML unavailable: Driver Not Loaded"]
    sampler.stop()


def test_xid_events_are_counted_and_the_last_one_kept() -> None:
    nvml = FakeNvml([FakeDevice(uuid="GPU-0"), FakeDevice(uuid="GPU-1")])
    nvml.pending_xids.extend([(1, 79), (1, 48), (1, 79)])
    sampler = GpuSampler(NvmlReader(nvml), interval=60)
    sampler.start()  # samples once
    sampler.stop()
    assert sampler.xid_counts == {(1, 79): 2, (1, 48): 1}
    assert sampler.last_xid == {1: 79}


async def test_agent_exports_dcgm_names_and_the_memory_of_its_vllm_processes(
        tmp_path: Path) -> None:
    nvml = FakeNvml([HEALTHY, FakeDevice(uuid="GPU-bbbb", unsupported={"nvmlDeviceGetPowerUsage"}),
                     FakeDevice(lost=True)])
    async with agent(tmp_path, gpu_reader=NvmlReader(nvml)) as (handle, _), \
            Hook(handle.state.config.ingest_socket, source="h:4242:1") as hook:
        await hook.send(1, pb.Event(time_unix_nano=10**15, engine_stats=pb.EngineStats()),
                        model="m", pid=4242)
        _, body = await get(handle)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    util = families["DCGM_FI_DEV_GPU_UTIL"].samples
    assert {s.labels["UUID"] for s in util} == {"GPU-aaaa", "GPU-bbbb"}
    assert set(util[0].labels) == {"gpu", "UUID", "device", "modelName", "Hostname"}
    power = families["DCGM_FI_DEV_POWER_USAGE"].samples
    assert [(s.labels["UUID"], s.value) for s in power] == [("GPU-aaaa", 120.0)]
    assert families["DCGM_FI_DEV_FB_USED"].samples[0].value == 1024  # MiB
    errors = {s.labels["field"]: s.value for s in families["vllm_audit_gpu_read_errors"].samples}
    assert errors[gpu.DEVICE] >= 1 and errors[gpu.POWER_USAGE] == 0
    # Only the pid a connected hook reported; pid 999 is someone else's process.
    (proc,) = families["vllm_audit_gpu_process_memory_used_bytes"].samples
    assert (proc.labels["pid"], proc.labels["source"], proc.value) == ("4242", "h:4242:1", 3 << 30)


async def test_pod_scope_exports_only_the_gpus_the_pods_vllm_was_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sidecar's NVML sees the whole node; with --gpu-scope pod only the devices the
    connected vLLM processes report (from the device plugin's NVIDIA_VISIBLE_DEVICES) are
    exported — the neighbour pod's GPU is not."""
    import asyncio

    from tests.support.sender_harness import running_sender
    from vllm_hooks.events import raw_events as raw

    def uuids(body: bytes) -> set[str]:
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        return {s.labels["UUID"] for s in families["DCGM_FI_DEV_GPU_UTIL"].samples}

    nvml = FakeNvml([HEALTHY, FakeDevice(uuid="GPU-bbbb"), FakeDevice(uuid="GPU-cccc")])
    async with agent(tmp_path, gpu_reader=NvmlReader(nvml), gpu_scope="pod") as (handle, _):
        _, body = await get(handle)
        assert uuids(body) == set()  # no vLLM process connected yet: nothing of the node
        monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "GPU-bbbb,GPU-cccc")
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-cccc")  # narrower: wins
        with running_sender(handle.state.config.ingest_socket) as (sender, buffer):
            assert sender.gpu_uuids == ("GPU-cccc",)
            buffer.offer((raw.LIFECYCLE, 10**18, "req-gpu-scope", pb.LIFECYCLE_PHASE_FINISHED,
                          3, 5, "stop", "FINISHED_STOPPED", 16, False))
            for _ in range(500):
                _, body = await get(handle)
                if uuids(body):
                    break
                await asyncio.sleep(0.01)
        assert uuids(body) == {"GPU-cccc"}
        assert b"vllm_audit_gpu_devices_exported 1.0" in body

    async with agent(tmp_path / "node", gpu_reader=NvmlReader(nvml)) as (handle, _):
        _, body = await get(handle)  # node scope (the default): every device
        assert uuids(body) == {"GPU-aaaa", "GPU-bbbb", "GPU-cccc"}
