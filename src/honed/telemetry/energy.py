"""Energy used by one training attempt: measured where the machine can, estimated where not.

Sources, in the order they are trusted:

- NVML's energy counter of the GPUs the attempt trains on (millijoules since the driver
  loaded; 64 bits, so it does not wrap);
- Intel RAPL package counters under ``/sys/class/powercap`` (microjoules, wrapping at
  ``max_energy_range_uj``; often readable by root only since CVE-2020-8694);
- otherwise an estimate: the CPU time the process (and its waited-for children) used ×
  ``telemetry.cpu_watts_per_core``, which is labelled as an estimate wherever it goes.

Measured figures are of whole devices (every process on that GPU or CPU package), not
of honed alone; the reading says so.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from honed.telemetry.system import gpu_handle, load_nvml, nvml_text

log = logging.getLogger(__name__)

RAPL_ROOT = Path("/sys/class/powercap")
# intel-rapl:0, intel-rapl:1 are packages; intel-rapl:0:0 (core, dram, ...) are parts of
# one, and intel-rapl-mmio:0 repeats package 0 through another interface.
_PACKAGE_DOMAIN = re.compile(r"^intel-rapl:\d+$")
# A package at 250 W wraps a 2^32 µJ range in about 17 s, a 2^38 one in about 18 min;
# polling this often (from the step callback) keeps at most one wrap between reads.
RAPL_POLL_EVERY_S = 1.0
JOULES_PER_KWH = 3.6e6


@dataclass
class RaplDomain:
    """One package-level RAPL counter and the energy folded in from it so far."""

    name: str
    energy_file: Path
    max_range_uj: int
    last_uj: int
    total_uj: int = 0

    def fold(self) -> None:
        """Add the energy since the last read, across at most one wraparound."""
        now = _read_int(self.energy_file)
        if now is None:
            return
        delta = now - self.last_uj
        if delta < 0:  # the counter wrapped past max_energy_range_uj back to 0
            delta += self.max_range_uj
        self.total_uj += delta
        self.last_uj = now


def rapl_package_domains(root: Path = RAPL_ROOT) -> list[RaplDomain]:
    """The package-level RAPL domains under ``root`` whose counters this process can
    read, each at its current reading; domains that cannot be read are skipped."""
    if not root.is_dir():
        return []
    domains = []
    for path in sorted(root.iterdir()):
        if not _PACKAGE_DOMAIN.match(path.name):
            continue
        energy = _read_int(path / "energy_uj")
        max_range = _read_int(path / "max_energy_range_uj")
        if energy is None or not max_range:
            log.debug("RAPL domain %s is not readable; skipped", path)
            continue
        try:
            name = (path / "name").read_text().strip()
        except OSError:
            name = path.name
        domains.append(RaplDomain(name, path / "energy_uj", max_range, energy))
    return domains


class EnergyMeter:
    """Started at the beginning of an attempt and read at its end.

    ``gpu_uuids`` are the GPUs the attempt trains on (NVML uuids, ``GPU-...``); none
    for a CPU attempt, whose idle GPUs are no part of its cost. Call :meth:`poll`
    often (once per step is fine; it reads at most once a second) so that RAPL counters
    cannot wrap twice unseen."""

    def __init__(self, cpu_watts_per_core: float = 12.0, *, gpu_uuids: Sequence[str] = (),
                 rapl_root: Path = RAPL_ROOT, pid: int | None = None) -> None:
        self.cpu_watts_per_core = cpu_watts_per_core
        self.gpu_uuids = list(gpu_uuids)
        self.rapl_root = rapl_root
        self.process = psutil.Process(pid)
        self._gpus: list[tuple[str, object, int, str]] = []  # uuid, handle, start mJ, name
        self._rapl: list[RaplDomain] = []
        self._started = 0.0
        self._cpu_start = 0.0
        self._last_poll = 0.0

    def start(self) -> EnergyMeter:
        """Take the starting readings of every source there is; returns the meter."""
        self._started = self._last_poll = time.monotonic()
        self._cpu_start = _cpu_seconds(self.process)
        self._gpus = []
        nvml = load_nvml() if self.gpu_uuids else None
        for uuid in self.gpu_uuids:
            handle = gpu_handle(uuid)
            if handle is None:
                continue
            try:
                start = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                name = nvml.nvmlDeviceGetName(handle)
            except nvml.NVMLError as exc:  # pre-Volta GPUs have no energy counter
                log.debug("GPU %s has no readable energy counter (%s)", uuid, exc)
                continue
            self._gpus.append((uuid, handle, start, nvml_text(name)))
        self._rapl = rapl_package_domains(self.rapl_root)
        return self

    def poll(self) -> None:
        """Fold in the RAPL counters if a second has passed since the last time."""
        now = time.monotonic()
        if self._rapl and now - self._last_poll >= RAPL_POLL_EVERY_S:
            self._last_poll = now
            for domain in self._rapl:
                domain.fold()

    def read(self) -> dict:
        """The energy since :meth:`start`: ``joules``, ``kwh``, ``measured``, ``method``
        ("nvml", "rapl", "nvml+rapl" or "estimate"), ``basis`` (in words), ``sources``,
        ``seconds`` and ``cpu_seconds``. Reading does not stop the meter."""
        for domain in self._rapl:
            domain.fold()
        seconds = time.monotonic() - self._started
        cpu_seconds = _cpu_seconds(self.process) - self._cpu_start
        sources = self._gpu_sources() + [
            {"method": "rapl", "domain": d.name, "joules": d.total_uj / 1e6} for d in self._rapl
        ]
        if sources:
            joules = sum(s["joules"] for s in sources)
            methods = sorted({s["method"] for s in sources})
            basis = _measured_basis(sources, unmeasured_gpus=len(self.gpu_uuids) - len(self._gpus))
            return _reading(joules, True, "+".join(methods), basis, sources, seconds, cpu_seconds)
        joules = cpu_seconds * self.cpu_watts_per_core
        basis = (f"estimate: CPU time {cpu_seconds:.2f} s × {self.cpu_watts_per_core:g} W per busy core "
                 "(telemetry.cpu_watts_per_core); nothing on this machine measures energy "
                 "(no NVML energy counter on a GPU in use, no readable RAPL package counter)")
        return _reading(joules, False, "estimate", basis, [], seconds, cpu_seconds)

    def _gpu_sources(self) -> list[dict]:
        if not self._gpus:
            return []
        nvml = load_nvml()
        out = []
        for uuid, handle, start, name in self._gpus:
            try:
                now = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            except nvml.NVMLError as exc:
                log.warning("GPU %s energy counter became unreadable (%s); left out of the reading", uuid, exc)
                continue
            out.append({"method": "nvml", "device": uuid, "name": name, "joules": (now - start) / 1000})
        return out


def _reading(joules: float, measured: bool, method: str, basis: str, sources: list[dict],
             seconds: float, cpu_seconds: float) -> dict:
    return {
        "joules": round(joules, 3), "kwh": joules / JOULES_PER_KWH, "measured": measured,
        "method": method, "basis": basis, "sources": sources,
        "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
    }


def _measured_basis(sources: list[dict], unmeasured_gpus: int) -> str:
    parts = []
    gpus = [f"{s['name']} ({s['device']})" for s in sources if s["method"] == "nvml"]
    packages = [s["domain"] for s in sources if s["method"] == "rapl"]
    if gpus:
        parts.append(f"NVML energy counter of {', '.join(gpus)}")
    if packages:
        parts.append(f"RAPL counters of CPU {', '.join(packages)}")
    left_out = ["the CPU"] if not packages else []
    if unmeasured_gpus:
        left_out.append(f"{unmeasured_gpus} GPU(s) in use without an energy counter")
    return (" + ".join(parts) + ": whole devices, every process on them, while the attempt ran"
            + (f"; {' and '.join(left_out)} not included" if left_out else ""))


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
