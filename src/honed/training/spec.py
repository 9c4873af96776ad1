"""What one training attempt is given and what it returns: torch-free, so the daemon,
the CLI and the planner use them without loading the training stack."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from honed.config import LoraSettings, ReportSettings, TelemetrySettings, TrainSettings
from honed.states import RunStatus

Control = Callable[[int], str | None]  # step -> None, "pause", "stop" or "cancel"
StepCallback = Callable[[dict[str, Any]], None]
CheckpointCallback = Callable[[int, Path], None]
EventCallback = Callable[[str, str, dict[str, Any]], None]  # kind, message, data: a job event


@dataclass
class RunSpec:
    """Everything one attempt needs; the run directory already holds its plan."""

    run_id: str
    run_dir: Path
    base: str
    base_version: int
    track: str
    lora: LoraSettings
    train: TrainSettings
    adapter_out: Path
    # What to observe, not what to train: taken from the workspace at each attempt.
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    # Where train.report_to's trackers write, its empty values filled in (resolve_report_settings).
    report: ReportSettings = field(default_factory=ReportSettings)


@dataclass
class RunOutcome:
    """How an attempt of a run ended."""

    status: RunStatus  # succeeded | paused | stopped | cancelled | failed
    step: int
    total_steps: int
    attempt: int
    final_metrics: dict[str, Any] = field(default_factory=dict)
    adapter_path: Path | None = None
    error: str | None = None
