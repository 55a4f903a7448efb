"""GPU telemetry behind a reader interface, sampled on a thread so a scrape never calls NVML.

`NvmlReader` is the real one (nvidia-ml-py's pynvml). On a machine without a GPU it raises
`GpuUnavailable`; the sampler then reports itself unavailable (a gauge and one log line) and
the agent carries on. `FakeGpuReader` stands in for a GPU where none can run (tests).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger("vllm_audit.agent")


class GpuUnavailable(Exception):
    pass


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    utilization_pct: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float
    power_w: float


class GpuReader(Protocol):
    def open(self) -> None: ...
    def read(self) -> list[GpuReading]: ...
    def close(self) -> None: ...


class NvmlReader:
    def __init__(self) -> None:
        self._nvml: Any = None

    def open(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:
            raise GpuUnavailable(f"NVML unavailable: {exc}") from exc
        self._nvml = pynvml

    def read(self) -> list[GpuReading]:
        nvml = self._nvml
        out = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            name = nvml.nvmlDeviceGetName(h)
            out.append(GpuReading(
                index=i,
                name=name.decode() if isinstance(name, bytes) else str(name),
                utilization_pct=float(nvml.nvmlDeviceGetUtilizationRates(h).gpu),
                memory_used_bytes=int(mem.used),
                memory_total_bytes=int(mem.total),
                temperature_c=float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
                power_w=nvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
            ))
        return out

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None


class FakeGpuReader:
    def __init__(self, readings: list[GpuReading] | None = None) -> None:
        self.readings = readings or [GpuReading(0, "Fake GPU", 42.0, 1 << 30, 8 << 30, 55.0, 120.0)]

    def open(self) -> None:
        pass

    def read(self) -> list[GpuReading]:
        return list(self.readings)

    def close(self) -> None:
        pass


class GpuSampler:
    def __init__(self, reader: GpuReader | None, interval: float) -> None:
        self.reader = reader
        self.interval = interval
        self.available = False
        self.snapshot: list[GpuReading] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.reader is None:
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
            self.snapshot = self.reader.read()
        except Exception as exc:
            self.errors += 1
            logger.warning("GPU read failed: %r", exc)

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
