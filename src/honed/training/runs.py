"""Runs: plan one and register it, or rebuild the spec of an existing one.

The one-shot ``honed train`` and the daemon's trainer both go through these functions:
``prepare_run`` plans and registers a new run, ``resume_spec`` rebuilds the spec of an
existing one; :func:`honed.training.recipe.run_attempt_of` then carries out an attempt.
Torch-free: planning needs no model.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path

from honed.config import LoraSettings, ReportSettings, TrainSettings
from honed.data.kinds import ACCEPTED_KINDS, datasets_problem
from honed.data.plan import load_plan, make_plan, read_jsonl, write_plan
from honed.training.everyday import everyday_records
from honed.training.spec import RunSpec
from honed.workspace import Workspace

log = logging.getLogger(__name__)


class RunError(Exception):
    """A run cannot be prepared or resumed; the message says why."""


def new_run_id() -> str:
    """A sortable, unique run id: run-YYYYMMDD-HHMMSS-xxxx."""
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def prepare_run(workspace: Workspace, store, dataset_ids: list[int], *, track: str,
                adapter_out: Path | None = None, base_version: int | None = None, run_id: str | None = None):
    """Plan a new run on ``dataset_ids`` and register it (as ``run_id`` when given, as
    the daemon does; a fresh id otherwise); returns its RunSpec."""

    settings = workspace.settings
    track_info = store.get_track(track)
    if track_info is None:
        raise RunError(f"unknown track '{track}'; tracks: {[t.name for t in store.list_tracks()]}")
    version = track_info.base_version if base_version is None else base_version
    if store.get_base(version) is None:
        raise RunError(f"unknown base version v{version}")
    datasets = []
    for dataset_id in dataset_ids:
        dataset = store.get_dataset(dataset_id)
        if dataset is None:
            raise RunError(f"unknown dataset id {dataset_id}")
        datasets.append(dataset)
    cfg = settings.train
    check_trackers_installed(cfg.report_to)  # before anything is planned or registered
    problem = datasets_problem(cfg.objective, datasets)
    if problem:
        raise RunError(problem)

    def new_records():
        for dataset in datasets:
            yield from read_jsonl(Path(dataset.stored_path))

    def replay_pool():
        chosen = set(dataset_ids)
        trained = store.trained_record_hashes(track, version)
        for dataset in store.list_datasets(track):
            # Replay within the kinds the objective learns from: SFT replays SFT, DPO pairs.
            if dataset.id not in chosen and dataset.stored_path and dataset.kind in ACCEPTED_KINDS[cfg.objective]:
                yield from (r for r in read_jsonl(Path(dataset.stored_path)) if r["hash"] in trained)

    plan = make_plan(
        new_records(), trained=store.trained_record_hashes(track, version),
        replay_pool=replay_pool() if cfg.replay_ratio > 0 else (),
        heldout_fraction=cfg.heldout_fraction, replay_ratio=cfg.replay_ratio,
        retrain_seen=cfg.retrain_seen, seed=cfg.seed,
        everyday_pool=everyday_records(workspace, workspace.resolve_base_path(store, version), version)
        if cfg.everyday_replay > 0 and cfg.objective == "sft" else (),  # everyday records are SFT chats
        everyday_ratio=cfg.everyday_replay,
    )
    run_id = run_id or new_run_id()
    run_dir = workspace.runs_dir / run_id
    # exist_ok: a trainer that died between planning and registering left the directory.
    run_dir.mkdir(parents=True, exist_ok=True)
    plan_info = write_plan(plan, run_dir)
    plan_info["notes"] = plan.notes
    out = Path(adapter_out).resolve() if adapter_out else workspace.adapters_dir / run_id
    if out.exists() and any(out.iterdir()):
        raise RunError(f"--out {out}: directory exists and is not empty; honed will not overwrite it")
    config = {
        "lora": settings.lora.model_dump(), "train": cfg.model_dump(),
        "base": workspace.resolve_base_path(store, version), "adapter_out": str(out), "plan": plan_info,
    }
    store.create_run(run_id=run_id, track=track, base_version=version, config=config, dataset_ids=dataset_ids)
    for note in plan.notes:
        log.info("run %s: %s", run_id, note)
    return resume_spec(workspace, store, run_id)


def resume_spec(workspace: Workspace, store, run_id: str, micro_batch: dict | None = None):
    """The RunSpec of an existing run, as it was planned; ``micro_batch`` (``batch_size``
    and ``grad_accum``, from the job's settings after an out-of-memory attempt) splits the
    same global batch into smaller micro-batches."""
    run = store.get_run(run_id)
    if run is None:
        known = [r.id for r in store.list_runs(limit=5)]
        raise RunError(f"unknown run '{run_id}'; latest runs: {known}")
    if run.status == "succeeded":
        raise RunError(f"run {run_id} already succeeded; its adapter is at {run.adapter_path}")
    run_dir = workspace.runs_dir / run_id
    load_plan(run_dir)  # fails early, with a clear message, on a run that never planned
    train = TrainSettings(**run.config["train"]).with_micro_batch(micro_batch or {})
    return RunSpec(
        run_id=run_id, run_dir=run_dir, base=run.config["base"], base_version=run.base_version,
        track=run.track, lora=LoraSettings(**run.config["lora"]), train=train,
        adapter_out=Path(run.config["adapter_out"]), telemetry=workspace.settings.telemetry,
        report=report_settings(workspace, train.report_to),
    )


def report_settings(workspace: Workspace, report_to: list[str]) -> ReportSettings:
    """The workspace's [report] settings resolved for this machine; a tracker of
    ``report_to`` whose package is missing is a RunError naming the extra to install."""
    from honed.telemetry.trackers import resolve_report_settings

    check_trackers_installed(report_to)
    return resolve_report_settings(workspace.settings.report, workspace.root, workspace.artifacts_dir)


def check_trackers_installed(report_to: list[str]) -> None:
    """A RunError naming the extra to install when a tracker's package is missing."""
    from honed.telemetry.trackers import TrackerMissing, require_installed

    try:
        require_installed(report_to)
    except TrackerMissing as exc:
        raise RunError(str(exc)) from exc


def mark_learned(store, run_id: str, run_dir: Path, track: str, base_version: int) -> None:
    """Remember the run's own (not replayed) records as learned by ``track`` on this
    base, so later plans skip them and replay draws from them."""
    plan = load_plan(run_dir)
    store.mark_records_trained(run_id, track, base_version, (r["hash"] for r in plan.train if not r.get("replay")))
