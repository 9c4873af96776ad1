"""System and accelerator figures: the keys a status page reads, and no GPU means []."""

from __future__ import annotations

import os
import subprocess
import sys

from honed.telemetry import accelerator_stats, system_stats
from honed.telemetry.system import load_nvml, process_stats, training_step_stats


def test_system_stats_has_the_machine_and_this_process():
    stats = system_stats()
    assert {"cpu_percent", "cpu_count", "ram_used_mb", "ram_total_mb", "process"} <= stats.keys()
    assert 0 < stats["ram_used_mb"] <= stats["ram_total_mb"]
    assert 0.0 <= stats["cpu_percent"] <= 100.0
    process = stats["process"]
    assert process["pid"] == os.getpid() and process["rss_mb"] > 10 and process["cpu_percent"] >= 0


def test_a_process_cpu_share_is_measured_between_calls():
    process_stats()
    assert sum(range(3_000_000)) > 0  # keeps one core busy for a moment
    assert process_stats()["cpu_percent"] > 0


def test_another_process_and_a_gone_one():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert system_stats(child.pid)["process"]["pid"] == child.pid
    finally:
        child.kill()
        child.wait()
    assert system_stats(child.pid)["process"] is None


def test_training_step_stats_without_a_gpu():
    figures = training_step_stats(None)
    assert set(figures) == {"cpu_percent", "rss_mb"} and figures["rss_mb"] > 0


def test_accelerator_stats_is_an_empty_list_without_nvml_or_gpu(caplog):
    if load_nvml() is not None and accelerator_stats():
        gpu = accelerator_stats()[0]
        assert {"index", "uuid", "name", "utilization_percent", "memory_used_mb", "memory_total_mb",
                "power_w", "energy_mj"} <= gpu.keys()
        return
    with caplog.at_level("WARNING"):
        assert accelerator_stats() == []
        assert training_step_stats("GPU-00000000-0000-0000-0000-000000000000").keys() == {"cpu_percent", "rss_mb"}
    assert not caplog.records, "a machine without a GPU is normal: nothing above debug"


def test_telemetry_does_not_import_torch():
    code = "import sys, honed.telemetry, honed.telemetry.energy_log; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
