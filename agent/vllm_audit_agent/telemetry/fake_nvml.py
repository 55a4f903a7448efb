"""A fake NVML library with pynvml's names, for machines without a GPU.

It stands in at the pynvml boundary only: `NvmlReader(FakeNvml(...))` runs the real reader.
Each device is a `FakeDevice`; a name in `unsupported` raises NVMLError_NotSupported, in
`failing` a generic NVMLError, and a `lost` device fails to open at all.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_Timeout(NVMLError):
    pass


class NVMLError_GpuIsLost(NVMLError):
    pass


@dataclass
class FakeDevice:
    name: str = "NVIDIA Fake GPU"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    util_gpu: int = 42
    util_memory: int = 17
    memory_used: int = 1 << 30
    memory_total: int = 8 << 30
    temperature_c: int = 55
    power_mw: int = 120_000
    #: (corrected?, volatile?) -> count
    ecc: dict[tuple[bool, bool], int] = field(default_factory=dict)
    throttle_reasons: int = 0
    #: pid -> bytes of GPU memory
    processes: dict[int, int] = field(default_factory=dict)
    unsupported: set[str] = field(default_factory=set)
    failing: set[str] = field(default_factory=set)
    lost: bool = False


class FakeNvml:
    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_Timeout = NVMLError_Timeout
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVML_TEMPERATURE_GPU = 0
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1
    nvmlEventTypeXidCriticalError = 8

    def __init__(self, devices: list[FakeDevice] | None = None, present: bool = True) -> None:
        self.devices = devices if devices is not None else [FakeDevice()]
        self.present = present
        self.initialised = False
        #: (device index, xid) events waiting for nvmlEventSetWait_v2.
        self.pending_xids: deque[tuple[int, int]] = deque()

    def _device(self, handle: int, call: str) -> FakeDevice:
        device = self.devices[handle]
        if call in device.unsupported:
            raise NVMLError_NotSupported(call)
        if call in device.failing:
            raise NVMLError(call)
        return device

    def nvmlInit(self) -> None:
        if not self.present:
            raise NVMLError("Driver Not Loaded")
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if self.devices[index].lost:
            raise NVMLError_GpuIsLost(f"GPU {index} is lost")
        return index

    def nvmlDeviceGetIndex(self, handle: int) -> int:
        return handle

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._device(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self._device(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        d = self._device(handle, "nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=d.util_gpu, memory=d.util_memory)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        d = self._device(handle, "nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=d.memory_total, used=d.memory_used,
                               free=d.memory_total - d.memory_used)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return self._device(handle, "nvmlDeviceGetTemperature").temperature_c

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._device(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetTotalEccErrors(self, handle: int, kind: int, counter: int) -> int:
        d = self._device(handle, "nvmlDeviceGetTotalEccErrors")
        return d.ecc.get((kind == self.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                          counter == self.NVML_VOLATILE_ECC), 0)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        return self._device(handle, "nvmlDeviceGetCurrentClocksEventReasons").throttle_reasons

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        d = self._device(handle, "nvmlDeviceGetComputeRunningProcesses")
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in d.processes.items()]

    def nvmlEventSetCreate(self) -> object:
        return object()

    def nvmlEventSetFree(self, events: object) -> None:
        pass

    def nvmlDeviceRegisterEvents(self, handle: int, types: int, events: object) -> None:
        self._device(handle, "nvmlDeviceRegisterEvents")

    def nvmlEventSetWait_v2(self, events: object, timeout_ms: int) -> Any:
        if not self.pending_xids:
            raise NVMLError_Timeout("no event")
        index, xid = self.pending_xids.popleft()
        return SimpleNamespace(device=index, eventData=xid,
                               eventType=self.nvmlEventTypeXidCriticalError)
