"""The energy meter: RAPL against a fake sysfs (wraparound included), NVML on a real GPU
when there is one, and the labelled estimate everywhere else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from honed.telemetry import EnergyMeter, accelerator_stats
from honed.telemetry.energy import rapl_package_domains
from honed.telemetry.energy_log import read_energy_log, record_attempt_energy, run_energy

NO_RAPL = Path("/nonexistent/powercap")


def _domain(root: Path, name: str, label: str, energy_uj: int, max_uj: int = 1_000_000) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "name").write_text(label + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


@pytest.fixture
def fake_powercap(tmp_path) -> Path:
    root = tmp_path / "powercap"
    _domain(root, "intel-rapl:0", "package-0", 900_000)
    _domain(root, "intel-rapl:1", "package-1", 100_000)
    _domain(root, "intel-rapl:0:0", "core", 5)  # part of package 0: never counted
    _domain(root, "intel-rapl-mmio:0", "package-0", 5)  # package 0 again, another interface
    locked = _domain(root, "intel-rapl:2", "package-2", 7)
    (locked / "energy_uj").unlink()  # stands for a counter only root may read
    (locked / "energy_uj").mkdir()
    (root / "intel-rapl").mkdir()  # the control type's own directory
    return root


def _set(root: Path, name: str, energy_uj: int) -> None:
    (root / name / "energy_uj").write_text(f"{energy_uj}\n")


def test_only_readable_package_domains_count(fake_powercap):
    domains = rapl_package_domains(fake_powercap)
    assert [d.name for d in domains] == ["package-0", "package-1"]
    assert rapl_package_domains(NO_RAPL) == []


def test_rapl_reading_across_a_wraparound(fake_powercap):
    meter = EnergyMeter(rapl_root=fake_powercap).start()
    _set(fake_powercap, "intel-rapl:0", 50_000)  # wrapped at 1 J: 0.1 J + 0.05 J
    _set(fake_powercap, "intel-rapl:1", 600_000)  # 0.5 J
    reading = meter.read()
    assert reading["measured"] is True and reading["method"] == "rapl"
    assert reading["joules"] == pytest.approx(0.65)
    assert reading["kwh"] == pytest.approx(0.65 / 3.6e6)
    joules_by_domain = {s["domain"]: s["joules"] for s in reading["sources"]}
    assert joules_by_domain == pytest.approx({"package-0": 0.15, "package-1": 0.5})
    assert "RAPL" in reading["basis"] and "package-0" in reading["basis"]

    # Polled past a second wrap, nothing is lost: 0.05 → 0.95 → (wrap) 0.2 = 1.15 J more.
    meter._last_poll = 0.0
    _set(fake_powercap, "intel-rapl:0", 950_000)
    meter.poll()
    _set(fake_powercap, "intel-rapl:0", 200_000)
    assert meter.read()["joules"] == pytest.approx(0.65 + 1.15)


def test_without_any_counter_the_estimate_is_labelled(tmp_path):
    meter = EnergyMeter(cpu_watts_per_core=10.0, rapl_root=NO_RAPL).start()
    sum(range(2_000_000))
    reading = meter.read()
    assert reading["measured"] is False and reading["method"] == "estimate"
    assert reading["cpu_seconds"] > 0
    assert reading["joules"] == pytest.approx(reading["cpu_seconds"] * 10.0, rel=0.01, abs=1e-3)
    assert "telemetry.cpu_watts_per_core" in reading["basis"] and "10 W" in reading["basis"]
    assert "nothing on this machine measures energy" in reading["basis"]


def test_nvml_energy_counter_of_a_real_gpu():
    gpus = [g for g in accelerator_stats() if g["energy_mj"] is not None]
    if not gpus:
        pytest.skip("no GPU with an NVML energy counter on this machine")
    meter = EnergyMeter(gpu_uuids=[gpus[0]["uuid"]], rapl_root=NO_RAPL).start()
    reading = meter.read()
    assert reading["measured"] is True and reading["method"] == "nvml"
    assert reading["sources"][0]["device"] == gpus[0]["uuid"] and reading["joules"] >= 0
    assert "CPU not included" in reading["basis"] or "the CPU" in reading["basis"]


def test_a_gpu_that_is_not_there_falls_back_to_the_estimate():
    reading = EnergyMeter(gpu_uuids=["GPU-00000000-0000-0000-0000-000000000000"], rapl_root=NO_RAPL).start().read()
    assert reading["method"] == "estimate"


def test_run_energy_sums_the_attempts_and_names_those_without_a_reading(tmp_path):
    estimate = {"joules": 2.0, "kwh": 2.0 / 3.6e6, "measured": False, "method": "estimate",
                "basis": "CPU time ...", "sources": [], "seconds": 1.0, "cpu_seconds": 0.2}
    record_attempt_energy(tmp_path, attempt=1, status="paused", reading=estimate)
    record_attempt_energy(tmp_path, attempt=3, status="succeeded", reading={**estimate, "joules": 3.0})
    with open(tmp_path / "energy.jsonl", "a") as out:
        out.write('{"attempt": 4, "jou')  # torn by a kill mid-write
    assert len(read_energy_log(tmp_path)) == 2
    summary = run_energy(tmp_path, attempts=4)
    assert summary["joules"] == pytest.approx(5.0) and summary["kwh"] == pytest.approx(5.0 / 3.6e6)
    assert summary["measured"] is False and summary["method"] == "estimate"
    assert [a["attempt"] for a in summary["attempts"]] == [1, 3]
    assert summary["attempts_without_reading"] == [2, 4]
    assert "attempt" in summary["covers"] and summary["log"] == "energy.jsonl"
    json.dumps(summary)

    record_attempt_energy(tmp_path, attempt=5, status="succeeded",
                          reading={**estimate, "measured": True, "method": "rapl"})
    mixed = run_energy(tmp_path, attempts=5)
    assert mixed["method"] == "mixed" and mixed["measured"] is False


def test_no_reading_at_all(tmp_path):
    summary = run_energy(tmp_path, attempts=1)
    assert summary["joules"] == 0 and summary["method"] == "none" and summary["measured"] is False
    assert summary["attempts_without_reading"] == [1]
