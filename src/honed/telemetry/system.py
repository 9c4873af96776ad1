"""CPU, memory and accelerator figures, cheap enough to sample at every training step.

CPU percentages come from psutil with ``interval=None``: each call reports the share
since the previous call on the same object, without sleeping, so the first call of a
process object reads 0.0. Process objects are kept per pid so that successive calls
measure the time in between. GPU figures come from NVML (the ``pynvml`` module of
nvidia-ml-py); where NVML or a GPU is absent they are simply an empty list.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from types import ModuleType

import psutil

log = logging.getLogger(__name__)

MIB = 2**20

_processes: dict[int, psutil.Process] = {}
_nvml_lock = threading.Lock()
_nvml_module: ModuleType | None = None
_nvml_tried = False


def system_stats(pid: int | None = None) -> dict:
    """The machine's CPU and memory use, and one process's (default: this one).

    Returns ``cpu_percent`` (all cores, 0..100, since the previous call), ``cpu_count``,
    ``ram_used_mb`` and ``ram_total_mb`` for the machine, and ``process``: ``{"pid",
    "rss_mb", "cpu_percent"}`` where a process's ``cpu_percent`` counts 100 per busy
    core (so 2 cores busy read 200), or None when that process is gone."""
    memory = psutil.virtual_memory()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count(),
        # total - available rather than ``used``: page cache the kernel can drop at
        # once is not memory anybody is short of.
        "ram_used_mb": round((memory.total - memory.available) / MIB, 1),
        "ram_total_mb": round(memory.total / MIB, 1),
        "process": process_stats(pid),
    }


def process_stats(pid: int | None = None) -> dict | None:
    """``{"pid", "rss_mb", "cpu_percent"}`` of process ``pid`` (default: this one), with
    ``cpu_percent`` at 100 per busy core since the previous call for that pid; None
    when the process is gone or not ours to inspect."""
    pid = os.getpid() if pid is None else pid
    try:
        process = _processes.get(pid)
        if process is None:
            process = _processes[pid] = psutil.Process(pid)
        with process.oneshot():
            return {
                "pid": pid,
                "rss_mb": round(process.memory_info().rss / MIB, 1),
                "cpu_percent": process.cpu_percent(interval=None),
            }
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        _processes.pop(pid, None)
        return None


def load_nvml() -> ModuleType | None:
    """``pynvml``, initialised, or None where NVML cannot be used (no driver, no
    library, no GPU). Tried once per process; the reason is logged once at debug level,
    because a machine without a GPU is normal, not an error."""
    global _nvml_module, _nvml_tried
    with _nvml_lock:
        if not _nvml_tried:
            _nvml_tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                _nvml_module = pynvml
            except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
                log.debug("NVML is not available (%s): no accelerator figures", exc)
        return _nvml_module


def accelerator_stats() -> list[dict]:
    """One dict per GPU that NVML sees: ``index``, ``uuid``, ``name``,
    ``utilization_percent``, ``memory_used_mb``, ``memory_total_mb``, ``power_w`` and
    ``energy_mj`` (the board's energy counter since the driver loaded); a figure the GPU
    does not support is None. An empty list where NVML or a GPU is absent."""
    nvml = load_nvml()
    if nvml is None:
        return []
    try:
        count = nvml.nvmlDeviceGetCount()
    except nvml.NVMLError as exc:
        log.debug("NVML cannot count devices (%s)", exc)
        return []
    out = []
    for index in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except nvml.NVMLError:
            continue
        out.append(_device_stats(nvml, handle, index))
    return out


@functools.lru_cache(maxsize=16)
def gpu_handle(uuid: str):
    """The NVML handle of the GPU with ``uuid``, or None (looked up once: the trainer asks
    every step)."""
    nvml = load_nvml()
    if nvml is None:
        return None
    try:
        return nvml.nvmlDeviceGetHandleByUUID(uuid)
    except nvml.NVMLError:
        return None


def training_step_stats(gpu_uuid: str | None = None) -> dict:
    """Figures for one training step's metrics row: this process's ``cpu_percent``
    (100 per busy core, since the previous call) and ``rss_mb``, and with ``gpu_uuid``
    that GPU's ``gpu_util_percent`` and ``gpu_power_w`` (left out where unsupported)."""
    process = process_stats() or {}
    out = {"cpu_percent": process.get("cpu_percent"), "rss_mb": process.get("rss_mb")}
    handle = gpu_handle(gpu_uuid) if gpu_uuid else None
    if handle is not None:
        nvml = load_nvml()
        utilization = _query(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
        power = _query(nvml, nvml.nvmlDeviceGetPowerUsage, handle)
        if utilization is not None:
            out["gpu_util_percent"] = utilization.gpu
        if power is not None:
            out["gpu_power_w"] = power / 1000
    return out


def _device_stats(nvml: ModuleType, handle, index: int) -> dict:
    memory = _query(nvml, nvml.nvmlDeviceGetMemoryInfo, handle)
    utilization = _query(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
    power = _query(nvml, nvml.nvmlDeviceGetPowerUsage, handle)  # milliwatts
    return {
        "index": index,
        "uuid": nvml_text(_query(nvml, nvml.nvmlDeviceGetUUID, handle)),
        "name": nvml_text(_query(nvml, nvml.nvmlDeviceGetName, handle)),
        "utilization_percent": utilization.gpu if utilization is not None else None,
        "memory_used_mb": round(memory.used / MIB, 1) if memory is not None else None,
        "memory_total_mb": round(memory.total / MIB, 1) if memory is not None else None,
        "power_w": power / 1000 if power is not None else None,
        "energy_mj": _query(nvml, nvml.nvmlDeviceGetTotalEnergyConsumption, handle),
    }


def _query(nvml: ModuleType, function, handle):
    """``function(handle)``, or None where the GPU does not support it."""
    try:
        return function(handle)
    except nvml.NVMLError:
        return None


def nvml_text(value) -> str | None:
    """An NVML string as text (older nvidia-ml-py releases return bytes)."""
    return value.decode() if isinstance(value, bytes) else value
