"""GPU telemetry behind a reader interface, sampled on a thread so a scrape never calls NVML.

`NvmlReader` reads NVML through a module with pynvml's names (nvidia-ml-py by default; tests
and `--gpu fake` pass `vllm_audit_agent.telemetry.fake_nvml.FakeNvml`, so the same reader code
runs everywhere).
Each field is read on its own: NotSupported (MIG, consumer boards) leaves the field missing,
any other error counts a read error for that field, and a device that fails does not stop the
others. Without a GPU `open` raises `GpuUnavailable`; the sampler then reports itself
unavailable (a gauge and one log line) and the agent carries on.

Field names and units are the DCGM exporter's (see `FIELDS`), so its dashboards and alerts work.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger("vllm_audit.agent")

GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"                      # %
MEM_COPY_UTIL = "DCGM_FI_DEV_MEM_COPY_UTIL"            # %
FB_USED = "DCGM_FI_DEV_FB_USED"                        # MiB
FB_FREE = "DCGM_FI_DEV_FB_FREE"                        # MiB
GPU_TEMP = "DCGM_FI_DEV_GPU_TEMP"                      # degrees C
POWER_USAGE = "DCGM_FI_DEV_POWER_USAGE"                # W
ECC_SBE_VOL = "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"          # corrected, since driver load
ECC_DBE_VOL = "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"          # uncorrected, since driver load
ECC_SBE_AGG = "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL"          # corrected, lifetime
ECC_DBE_AGG = "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL"          # uncorrected, lifetime
THROTTLE = "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"        # NVML bitmask
XID = "DCGM_FI_DEV_XID_ERRORS"                         # last XID seen
#: Every per-device field with its help text; the closed set of read-error labels adds
#: DEVICE (a device that could not be opened), PROCESSES and XID.
FIELDS: dict[str, str] = {
    GPU_UTIL: "GPU utilization (in %).",
    MEM_COPY_UTIL: "Memory utilization (in %).",
    FB_USED: "Framebuffer memory used (in MiB).",
    FB_FREE: "Framebuffer memory free (in MiB).",
    GPU_TEMP: "GPU temperature (in C).",
    POWER_USAGE: "Power draw (in W).",
    ECC_SBE_VOL: "Total number of single-bit volatile ECC errors.",
    ECC_DBE_VOL: "Total number of double-bit volatile ECC errors.",
    ECC_SBE_AGG: "Total number of single-bit persistent ECC errors.",
    ECC_DBE_AGG: "Total number of double-bit persistent ECC errors.",
    THROTTLE: "Current clock throttle reasons (NVML bitmask).",
}
DEVICE = "device"
PROCESSES = "processes"
READ_ERROR_FIELDS = (*FIELDS, XID, PROCESSES, DEVICE)
MIB = 1 << 20
#: Bounds the XID events drained per sample (a storm must not stall the sampler).
MAX_XID_EVENTS_PER_READ = 1000


class GpuUnavailable(Exception):
    pass


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str
    name: str
    #: DCGM field name -> value; a field the device does not support is absent.
    fields: dict[str, float]
    #: pid -> GPU memory used in bytes, for every compute process NVML reports.
    processes: dict[int, int] = field(default_factory=dict)


@dataclass
class GpuRead:
    devices: list[GpuReading] = field(default_factory=list)
    #: Failed reads in this sample by field (NotSupported is not a failure).
    errors: Counter[str] = field(default_factory=Counter)
    #: (gpu index, xid) of every XID event since the previous read.
    xids: list[tuple[int, int]] = field(default_factory=list)


class GpuReader(Protocol):
    def open(self) -> None: ...
    def read(self) -> GpuRead: ...
    def close(self) -> None: ...


class NvmlReader:
    def __init__(self, nvml: Any = None) -> None:
        """`nvml`: a module with pynvml's names (functions, constants, NVMLError classes);
        None imports nvidia-ml-py's pynvml at `open`."""
        self._module = nvml
        self._nvml: Any = None
        self._events: Any = None

    def open(self) -> None:
        try:
            nvml = self._module
            if nvml is None:
                nvml = importlib.import_module("pynvml")  # nvidia-ml-py, only where used
            nvml.nvmlInit()
        except Exception as exc:
            raise GpuUnavailable(f"NVML unavailable: {exc}") from exc
        self._nvml = nvml
        self._events = self._register_xid_events(nvml)

    @staticmethod
    def _register_xid_events(nvml: Any) -> Any:
        """An event set for XID errors on every device that supports them, or None."""
        try:
            events = nvml.nvmlEventSetCreate()
        except Exception:
            return None
        registered = 0
        for i in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, events)
                registered += 1
            except Exception as exc:
                logger.info("GPU %d: no XID events (%r)", i, exc)
        if not registered:
            nvml.nvmlEventSetFree(events)
            return None
        return events

    def read(self) -> GpuRead:
        nvml = self._nvml
        out = GpuRead()
        for i in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                uuid, name = _text(nvml.nvmlDeviceGetUUID(handle)), _text(
                    nvml.nvmlDeviceGetName(handle))
            except Exception as exc:
                out.errors[DEVICE] += 1
                logger.debug("GPU %d unreadable: %r", i, exc)
                continue
            out.devices.append(self._read_device(nvml, i, handle, uuid, name, out.errors))
        self._drain_xids(nvml, out)
        return out

    def _read_device(self, nvml: Any, index: int, handle: Any, uuid: str, name: str,
                     errors: Counter[str]) -> GpuReading:
        fields: dict[str, float] = {}

        def read(names: tuple[str, ...], call: Callable[[], tuple[float, ...]]) -> None:
            try:
                values = call()
            except nvml.NVMLError_NotSupported:
                return  # the device has no such field: missing, not failed
            except Exception:
                for n in names:
                    errors[n] += 1
                return
            fields.update(zip(names, values, strict=True))

        def utilization() -> tuple[float, float]:
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            return float(rates.gpu), float(rates.memory)

        def memory() -> tuple[float, float]:
            info = nvml.nvmlDeviceGetMemoryInfo(handle)
            return info.used / MIB, info.free / MIB

        def ecc(kind: int, counter: int) -> Callable[[], tuple[float]]:
            return lambda: (float(nvml.nvmlDeviceGetTotalEccErrors(handle, kind, counter)),)

        def throttle() -> tuple[float]:
            get = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
                nvml.nvmlDeviceGetCurrentClocksThrottleReasons
            return (float(get(handle)),)

        read((GPU_UTIL, MEM_COPY_UTIL), utilization)
        read((FB_USED, FB_FREE), memory)
        read((GPU_TEMP,), lambda: (float(nvml.nvmlDeviceGetTemperature(
            handle, nvml.NVML_TEMPERATURE_GPU)),))
        read((POWER_USAGE,), lambda: (nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,))
        corrected, uncorrected = (nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                                  nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
        read((ECC_SBE_VOL,), ecc(corrected, nvml.NVML_VOLATILE_ECC))
        read((ECC_DBE_VOL,), ecc(uncorrected, nvml.NVML_VOLATILE_ECC))
        read((ECC_SBE_AGG,), ecc(corrected, nvml.NVML_AGGREGATE_ECC))
        read((ECC_DBE_AGG,), ecc(uncorrected, nvml.NVML_AGGREGATE_ECC))
        read((THROTTLE,), throttle)
        processes: dict[int, int] = {}
        try:
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.usedGpuMemory is not None:  # None: not available (e.g. Windows WDDM)
                    processes[int(proc.pid)] = int(proc.usedGpuMemory)
        except nvml.NVMLError_NotSupported:
            pass
        except Exception:
            errors[PROCESSES] += 1
        return GpuReading(index, uuid, name, fields, processes)

    def _drain_xids(self, nvml: Any, out: GpuRead) -> None:
        if self._events is None:
            return
        for _ in range(MAX_XID_EVENTS_PER_READ):
            try:
                data = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError_Timeout:
                return  # nothing pending
            except Exception:
                out.errors[XID] += 1
                return
            try:
                out.xids.append((int(nvml.nvmlDeviceGetIndex(data.device)), int(data.eventData)))
            except Exception:
                out.errors[XID] += 1

    def close(self) -> None:
        if self._nvml is not None:
            if self._events is not None:
                self._nvml.nvmlEventSetFree(self._events)
                self._events = None
            self._nvml.nvmlShutdown()
            self._nvml = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FakeGpuReader(NvmlReader):
    """The real reader over a fake NVML with one healthy device (`--gpu fake`, demos, tests)."""

    def __init__(self, nvml: Any = None) -> None:
        from vllm_audit_agent.telemetry.fake_nvml import FakeNvml

        super().__init__(nvml if nvml is not None else FakeNvml())


class GpuSampler:
    def __init__(self, reader: GpuReader | None, interval: float) -> None:
        self.reader = reader
        self.interval = interval
        self.available = False
        self.snapshot: list[GpuReading] = []
        #: Failed reads by field (READ_ERROR_FIELDS), including whole reads that failed.
        self.read_errors: Counter[str] = Counter()
        #: XID events by (gpu index, xid), and the last XID per gpu index.
        self.xid_counts: Counter[tuple[int, int]] = Counter()
        self.last_xid: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def errors(self) -> int:
        return sum(self.read_errors.values())

    def start(self) -> None:
        if self.reader is None:
            logger.info("GPU telemetry disabled")
            return
        try:
            self.reader.open()
        except GpuUnavailable as exc:
            logger.info("GPU telemetry unavailable, continuing without it: %s", exc)
            return
        self.available = True
        self._sample()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        assert self.reader is not None
        try:
            read = self.reader.read()
        except Exception as exc:
            self.read_errors[DEVICE] += 1
            logger.warning("GPU read failed: %r", exc)
            return
        self.snapshot = read.devices  # replaced whole: a scrape sees one consistent sample
        self.read_errors.update(read.errors)
        for index, xid in read.xids:
            self.xid_counts[(index, xid)] += 1
            self.last_xid[index] = xid

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(0.1, timeout))
        if self.available and self.reader is not None:
            self.reader.close()
        self.available = False
