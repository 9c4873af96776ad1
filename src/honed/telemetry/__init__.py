"""What the machine is doing while honed trains: CPU, memory, accelerators, energy.

Nothing here imports torch, so ``honed status`` and the web server can read these
figures without paying for it. ``system`` samples the CPU, memory and GPUs (via NVML);
``energy`` meters what a training attempt used, and ``energy_log`` keeps one reading
per attempt in the run's directory and sums them for the manifest.
"""

from honed.telemetry.energy import EnergyMeter
from honed.telemetry.system import accelerator_stats, system_stats

__all__ = ["EnergyMeter", "accelerator_stats", "system_stats"]
