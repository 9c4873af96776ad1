"""Experiment trackers (``train.report_to``): TensorBoard, MLflow and W&B get what honed stores.

A run's trackers get its settings when an attempt starts, every train and eval row's
figures per step, the final metrics when the attempt ends, and, once the daemon has
evaluated the adapter, the eval figures, the gates' verdict and the adapter's path. One
class per tracker, each with the three calls of :class:`Tracker`; :class:`RunTrackers`
holds those of one run, keeps their run ids in ``runs/RUN/trackers.json`` so that a
resumed attempt and the evaluation continue the same MLflow run, W&B run and TensorBoard
directory, and turns a tracker's failure into a warning: a dashboard that cannot be
written never costs the training.

Each library is imported only when its tracker starts: ``honed --help`` and ``honed
status`` never load them. A tracker whose package is missing is refused before a run is
planned (:func:`require_installed`), with the extra to install.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from honed.atomic_files import write_json_atomically
from honed.config import ReportSettings

log = logging.getLogger(__name__)

STATE_FILE = "trackers.json"
# The module each tracker imports: find_spec looks for it without importing it.
MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
# How an attempt's status reads in MLflow (RUNNING, FINISHED, FAILED, KILLED).
MLFLOW_STATUS = {"succeeded": "FINISHED", "stopped": "FINISHED", "failed": "FAILED", "crashed": "FAILED",
                 "paused": "KILLED", "cancelled": "KILLED"}


class TrackerMissing(RuntimeError):
    """A tracker of ``train.report_to`` whose package is not installed; says which extra to install."""


def missing_message(name: str) -> str:
    """What to tell a user whose ``train.report_to`` names ``name`` without its package."""
    return (f"train.report_to includes '{name}', but the {name} package is not installed: "
            f"pip install 'honed[{name}]' (or remove '{name}' from train.report_to)")


def require_installed(names: list[str]) -> None:
    """Raise :class:`TrackerMissing` for the first tracker in ``names`` whose package is
    missing, without importing any of them."""
    for name in names:
        if importlib.util.find_spec(MODULES[name]) is None:
            raise TrackerMissing(missing_message(name))


def resolve_report_settings(report: ReportSettings, workspace_root: Path, artifacts_dir: Path) -> ReportSettings:
    """``report`` with its empty values filled in: the TensorBoard directory made absolute,
    the MLflow URI from MLFLOW_TRACKING_URI or the workspace's SQLite store, the W&B mode
    from WANDB_MODE or offline. An empty ``tensorboard_dir`` stays empty: the run's own."""
    tensorboard_dir = report.tensorboard_dir
    if tensorboard_dir and not Path(tensorboard_dir).is_absolute():
        tensorboard_dir = str(workspace_root / tensorboard_dir)
    uri = (report.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
           or f"sqlite:///{(artifacts_dir / 'mlflow.db').resolve()}")
    mode = report.wandb_mode or os.environ.get("WANDB_MODE") or "offline"
    return report.model_copy(update={"tensorboard_dir": tensorboard_dir, "mlflow_tracking_uri": uri,
                                     "wandb_mode": mode})


@dataclass
class TrackedRun:
    """What every tracker knows of the run it reports: names and where to write."""

    run_id: str
    track: str
    run_dir: Path
    report: ReportSettings  # resolved (resolve_report_settings)


class Tracker(Protocol):
    """One experiment tracker. ``state`` is what it needs to continue the same run in
    another process (kept in trackers.json); empty before its first start."""

    state: dict[str, Any]

    def start(self, settings: dict[str, Any]) -> None:
        """Open (or reopen) the tracker's run; a new run records ``settings``."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``metrics`` at optimizer step ``step``."""

    def finish(self, summary: dict[str, Any]) -> None:
        """Record ``summary`` (numbers as figures, text as tags or notes) and close the run."""


def flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` as ``{"train.lr": 1}``; lists become their JSON text."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list | tuple) else value
    return out


def numbers(figures: dict[str, Any]) -> dict[str, float]:
    """The numeric figures of a row (bools and text left out), as floats."""
    return {k: float(v) for k, v in figures.items() if isinstance(v, int | float) and not isinstance(v, bool)}


class TensorBoardTracker:
    """Event files of ``SummaryWriter`` in the run's TensorBoard directory."""

    def __init__(self, run: TrackedRun, state: dict[str, Any]) -> None:
        self.run = run
        self.state = dict(state)
        self.writer: Any = None
        self.step = 0

    def start(self, settings: dict[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TrackerMissing(missing_message("tensorboard")) from exc
        report = self.run.report
        log_dir = self.state.get("log_dir") or str(Path(report.tensorboard_dir) / self.run.run_id
                                                   if report.tensorboard_dir else self.run.run_dir / "tensorboard")
        new = not self.state
        # A resumed attempt repeats the steps after its checkpoint: purge_step drops what
        # the earlier attempt wrote from there on, so each step has one value.
        start_step = settings.get("start_step")
        purge = start_step + 1 if not new and isinstance(start_step, int) else None
        self.writer = SummaryWriter(log_dir=log_dir, purge_step=purge)
        self.state = {"log_dir": log_dir}
        self.step = start_step or 0
        if new:
            text = json.dumps(settings, indent=2, default=str)
            self.writer.add_text("settings", "\n".join("    " + line for line in text.splitlines()), self.step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.step = step
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, summary: dict[str, Any]) -> None:
        step = summary.get("step", self.step)
        for key, value in summary.items():
            if isinstance(value, str):
                self.writer.add_text(key, value, step)
        for key, value in numbers(summary).items():
            if key != "step":
                self.writer.add_scalar(key, value, step)
        self.writer.close()


class MlflowTracker:
    """A run of MLflow's client API (no global active run) in the configured experiment."""

    def __init__(self, run: TrackedRun, state: dict[str, Any]) -> None:
        self.run = run
        self.state = dict(state)
        self.client: Any = None
        self.step = 0

    def start(self, settings: dict[str, Any]) -> None:
        try:
            from mlflow import MlflowClient
        except ImportError as exc:
            raise TrackerMissing(missing_message("mlflow")) from exc
        uri = self.state.get("tracking_uri") or self.run.report.mlflow_tracking_uri
        self.client = MlflowClient(tracking_uri=uri)
        self.step = settings.get("start_step") or 0
        if self.state.get("run_id"):
            self.client.update_run(self.state["run_id"], status="RUNNING")
            return
        name = self.run.report.mlflow_experiment or self.run.track
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        created = self.client.create_run(experiment_id, run_name=self.run.run_id,
                                         tags={"honed.run": self.run.run_id, "honed.track": self.run.track})
        self.state = {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": created.info.run_id}
        # Parameters cannot change once logged: only a new run records them.
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flat(settings).items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 parameters
            self.client.log_batch(created.info.run_id, params=params[i:i + 100])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        self.step = step
        now = int(time.time() * 1000)
        self.client.log_batch(self.state["run_id"], metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, summary: dict[str, Any]) -> None:
        figures = {k: v for k, v in numbers(summary).items() if k != "step"}
        if figures:
            self.log(summary.get("step", self.step), figures)
        run_id = self.state["run_id"]
        for key, value in summary.items():
            if isinstance(value, str):
                self.client.set_tag(run_id, key, value[:5000])
        self.client.set_terminated(run_id, MLFLOW_STATUS.get(str(summary.get("status", "succeeded")), "FINISHED"))


class WandbTracker:
    """A W&B run, offline by default (written under runs/RUN/wandb; ``wandb sync`` uploads it).

    Figures are logged against honed's step as their x-axis (``define_metric``), not W&B's
    own counter, so a resumed attempt that repeats steps after its checkpoint, or the
    evaluation in a later process, lands on the right steps."""

    def __init__(self, run: TrackedRun, state: dict[str, Any]) -> None:
        self.run = run
        self.state = dict(state)
        self.wandb_run: Any = None

    def start(self, settings: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise TrackerMissing(missing_message("wandb")) from exc
        report = self.run.report
        new = not self.state
        mode: Any = report.wandb_mode or "offline"  # resolved already; "" is only the setting's "not set"
        run_id = self.state.get("run_id") or secrets.token_hex(4)  # W&B's own ids look the same
        self.wandb_run = wandb.init(
            project=self.state.get("project") or report.wandb_project or self.run.track,
            entity=report.wandb_entity or None, id=run_id, resume="allow", name=self.run.run_id,
            group=self.run.track, dir=str(self.run.run_dir), mode=mode,
            config=settings if new else None,
            settings=wandb.Settings(console="off", silent=True, disable_job_creation=True),
        )
        self.wandb_run.define_metric("step")
        self.wandb_run.define_metric("*", step_metric="step")
        self.state = {"run_id": run_id, "project": self.wandb_run.project or report.wandb_project or self.run.track}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.wandb_run.log({"step": step, **metrics})

    def finish(self, summary: dict[str, Any]) -> None:
        self.wandb_run.summary.update(summary)
        self.wandb_run.finish(exit_code=1 if summary.get("status") in ("failed", "crashed") else 0)


TRACKERS: dict[str, type[TensorBoardTracker] | type[MlflowTracker] | type[WandbTracker]] = {
    "tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker,
}


class RunTrackers:
    """The trackers of one run. A tracker that fails is dropped with a warning (its name
    and the error) for the rest of this process; the others go on, and so does training."""

    def __init__(self, names: list[str], run: TrackedRun) -> None:
        self.run = run
        saved = self._saved()
        self.trackers: dict[str, Tracker] = {name: TRACKERS[name](run, saved.get(name, {})) for name in names}

    def _saved(self) -> dict[str, Any]:
        path = self.run.run_dir / STATE_FILE
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("run %s: %s unreadable (%s); trackers start new runs", self.run.run_id, path, exc)
            return {}
        return saved if isinstance(saved, dict) else {}

    def _each(self, what: str, call: Any) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                call(tracker)
            except Exception as exc:  # a dashboard must never cost the training
                log.warning("run %s: %s tracker dropped at %s: %s: %s", self.run.run_id, name, what,
                            type(exc).__name__, exc)
                del self.trackers[name]

    def start(self, settings: dict[str, Any]) -> None:
        """Start every tracker and remember their run ids in the run's trackers.json."""
        self._each("start", lambda t: t.start(settings))
        saved = self._saved()
        saved.update({name: t.state for name, t in self.trackers.items()})
        try:
            write_json_atomically(self.run.run_dir / STATE_FILE, saved)
        except OSError as exc:  # the next attempt starts new tracker runs; this one goes on
            log.warning("run %s: %s not written (%s)", self.run.run_id, STATE_FILE, exc)

    def log(self, step: int, row: dict[str, Any], prefix: str = "") -> None:
        """The numeric figures of ``row`` (a stored train or eval row) at ``step``, each
        named ``prefix + name`` (``train/loss``, ``eval/val_loss``)."""
        figures = {f"{prefix}{k}": v for k, v in numbers(row).items() if k != "step"}
        if figures:
            self._each("log", lambda t: t.log(step, figures))

    def finish(self, summary: dict[str, Any]) -> None:
        """Close every tracker's run with ``summary``."""
        self._each("finish", lambda t: t.finish(summary))
        self.trackers.clear()


def report_after_training(report_to: list[str], run: TrackedRun, step: int, figures: dict[str, Any],
                          summary: dict[str, Any]) -> None:
    """Continue the run's trackers after its training attempt (the evaluation, in the
    daemon or after ``honed train --eval``): ``figures`` at the run's last ``step``, then
    ``summary``, in the same tracker runs as the training."""
    trackers = RunTrackers(report_to, run)
    trackers.start({"phase": "evaluation", "start_step": step})
    trackers.log(step, figures)
    trackers.finish({"step": step, **summary})
