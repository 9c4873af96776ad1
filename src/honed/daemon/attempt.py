"""One attempt at a job, in the trainer process: plan or resume the job's run, train it
with the recipe (:mod:`honed.training.recipe`), evaluate and gate its adapter
(:func:`honed.evaluation.evaluate.evaluate_and_gate`), and record how it ended as one
:class:`~honed.daemon.outcome.AttemptOutcome` (to a file, then through the store): how
it ended, why, how far it got, the adapter and its verdict. The daemon settles the job
from that record alone.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from honed.daemon.fencing import ClaimLost, FencedRunStore, JobControl, ProgressReporter
from honed.daemon.outcome import AttemptOutcome, record_outcome
from honed.states import AttemptStatus, RunStatus

log = logging.getLogger("honed.trainer")

# The exit status says what the outcome says, for people reading a process list.
EXIT_CRASHED = 1
EXIT_UNTRAINABLE = 3
EXIT_CLAIM_LOST = 4  # the store refused this trainer's writes as stale: it recorded nothing


def run_attempt(root: Path, job_id: int, parent_pid: int | None, fence: int | None = None) -> int:
    """One attempt at ``job_id`` for the claim with ``fence``: carry it out, record its
    outcome, return the exit code (see the module's docstring)."""
    from honed.store import StaleAttemptError
    from honed.workspace import open_workspace

    store = None
    try:
        store = open_workspace(root).open_store()
        outcome = _attempt(root, store, job_id, parent_pid, fence)
    except (ClaimLost, StaleAttemptError) as exc:  # StaleClaimError is a StaleAttemptError
        log.error("job %d: the store refused this trainer's writes, stopping without writing more: %s", job_id, exc)
        _close(store)
        return EXIT_CLAIM_LOST
    except Exception as exc:  # the attempt crashed: say so, and how, in its outcome
        log.exception("job %d: the attempt crashed", job_id)
        outcome = AttemptOutcome(job_id=job_id, fence=fence, status=_crash_status(exc),
                                 reason=_crash_reason(root, exc), error=traceback.format_exc())
    if outcome is None:  # a rank other than 0: rank 0 records
        _close(store)
        return 0
    try:
        record_outcome(root, store, outcome)
    except (ClaimLost, StaleAttemptError) as exc:
        log.error("job %d: the store refused the outcome as stale: %s", job_id, exc)
        return EXIT_CLAIM_LOST
    finally:
        _close(store)
    log.info("job %d: attempt ended %s: %s", job_id, outcome.status, outcome.reason)
    return {AttemptStatus.CRASHED: EXIT_CRASHED, AttemptStatus.UNTRAINABLE: EXIT_UNTRAINABLE}.get(outcome.status, 0)


def _crash_status(exc: BaseException) -> AttemptStatus:
    from honed.atomic_files import is_disk_full

    if out_of_memory(exc):
        return AttemptStatus.OUT_OF_MEMORY
    return AttemptStatus.DISK_FULL if is_disk_full(exc) else AttemptStatus.CRASHED


def _crash_reason(root: Path, exc: BaseException) -> str:
    """One line: the exception; a disk-full one names the path it was writing (else the
    artefacts' folder)."""
    from honed.atomic_files import DiskFull, is_disk_full

    if isinstance(exc, DiskFull):
        return str(exc)
    if not is_disk_full(exc):
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    from honed.workspace import open_workspace

    try:
        where = str(open_workspace(root).artifacts_dir)
    except Exception:  # noqa: BLE001 - the reason must be written whatever the settings say
        where = str(root)
    return f"disk full writing under {where}: {type(exc).__name__}: {exc}".splitlines()[0]


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed: CUDA's OutOfMemoryError, Python's
    MemoryError, or the CPU allocator's refusal (a memory limit, an overcommitted host)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def _close(store) -> None:
    if store is not None:
        store.close()


def _join_world(root: Path, job):
    """This process's place among the job's trainer processes (one, outside torchrun)."""
    from honed.config import SettingsError
    from honed.training.distributed import Dist, world_size_from_env
    from honed.workspace import open_workspace

    if world_size_from_env() == 1:
        return Dist()
    try:
        backend = open_workspace(root, job.overrides).settings.train.backend
    except SettingsError:
        backend = "auto"  # rank 0 reports the bad setting
    return Dist.start(backend)


def _attempt(root: Path, store, job_id: int, parent_pid: int | None, fence: int | None) -> AttemptOutcome | None:
    """Carry out the attempt: plan or resume the job's run, train it with the recipe,
    evaluate and gate its adapter; returns how it ended (None on ranks other than 0)."""
    from honed.config import SettingsError
    from honed.daemon.device_claims import claim_accelerator
    from honed.data.plan import PlanError
    from honed.data.tokenization import TokenizationError
    from honed.evaluation.evaluate import evaluate_and_gate
    from honed.store import StaleClaimError, StoreError
    from honed.training.model_loading import BaseNotFound, UnsupportedSetting, check_training_support, pick_device
    from honed.training.recipe import run_attempt_of
    from honed.training.runs import RunError, prepare_run, resume_spec
    from honed.workspace import open_workspace

    job = store.get_job(job_id)
    # Under torchrun (train.nproc > 1) every rank runs this; rank 0 does what a single
    # trainer does and tells the others which run to train, or that there is none.
    dist = _join_world(root, job)
    claim = None
    try:
        if not dist.main:
            run_id = dist.broadcast(None)
            if run_id is not None:  # nothing to train otherwise: rank 0 says why
                run_attempt_of(resume_spec(open_workspace(root, job.overrides), store, run_id,
                                           job.overrides.get("train")), store, dist=dist)
            return None
        control = JobControl(open_workspace(root), store, job_id, parent_pid, fence)
        signal.signal(signal.SIGTERM, control.on_signal)
        signal.signal(signal.SIGINT, control.on_signal)
        # Under torchrun the daemon knows torchrun's pid as the trainer's: it stays.
        store.report_progress(job_id, {"phase": "loading"}, trainer_pid=None if dist.active else os.getpid(),
                              fence=fence)

        def untrainable(exc: Exception, run_id: str | None = None) -> AttemptOutcome:
            reason = f"job {job_id} cannot be trained: {exc}"
            print(reason, file=sys.stderr, flush=True)
            return AttemptOutcome(job_id=job_id, fence=fence, status=AttemptStatus.UNTRAINABLE, reason=reason,
                                  run_id=run_id)

        try:
            workspace = open_workspace(root, job.overrides)
            run = store.get_run(job.run_id) if job.run_id else None
            if run is not None and RunStatus(run.status).has_adapter and run.adapter_path:
                spec = None  # trained already: an earlier attempt died while evaluating
            elif run is not None:
                spec = resume_spec(workspace, store, run.id, job.overrides.get("train"))
            else:
                spec = prepare_run(workspace, store, job.dataset_ids, track=job.track, run_id=job.run_id)
            if spec is not None:
                check_training_support(spec.train, pick_device())
        except (SettingsError, PlanError, RunError, StoreError, ValueError) as exc:
            dist.broadcast(None)
            return untrainable(exc, job.run_id)

        def on_checkpoint(step: int, path: Path) -> None:
            try:
                store.add_job_event(job_id, "checkpoint", f"checkpoint at step {step}",
                                    {"step": step, "path": str(path)}, fence=fence)
            except StaleClaimError as exc:
                raise ClaimLost(str(exc)) from exc
            except StoreError as exc:
                log.warning("job %d: checkpoint event not written (%s)", job_id, exc)

        def on_event(kind: str, message: str, data: dict) -> None:
            try:
                store.add_job_event(job_id, kind, message, data, fence=fence)
            except StaleClaimError as exc:
                raise ClaimLost(str(exc)) from exc

        claim = claim_accelerator(workspace, store, job_id, fence)  # before any model loads: training or evaluating
        if spec is None:
            dist.broadcast(None)
            adapter = evaluate_and_gate(workspace, store, job, run, run.config["base"], fence)
            return _ended(job_id, fence, AttemptStatus(run.status), run, adapter)
        log.info("job %d: attempt on run %s starts", job_id, spec.run_id)
        dist.broadcast(spec.run_id)
        try:
            trained = run_attempt_of(spec, FencedRunStore(store, job_id, fence), control=control,
                                     on_step=ProgressReporter(store, job_id, fence), on_checkpoint=on_checkpoint,
                                     on_event=on_event)
        except (TokenizationError, UnsupportedSetting, BaseNotFound) as exc:  # retrying cannot help
            return untrainable(exc, spec.run_id)
        status = control.attempt_status(trained.status)
        if status == AttemptStatus.INTERRUPTED:
            store.add_job_event(job_id, "interrupted", f"{control.interrupted}; checkpoint at step "
                                f"{trained.step}", {"step": trained.step}, fence=fence)
        run = store.get_run(spec.run_id)
        adapter = None
        if status.has_adapter and trained.adapter_path:
            adapter = evaluate_and_gate(workspace, store, job, run, spec.base, fence)
        return _ended(job_id, fence, status, run, adapter)
    finally:
        if claim is not None:
            claim.withdraw()
        dist.close()


def _ended(job_id: int, fence: int | None, status: AttemptStatus, run, adapter) -> AttemptOutcome:
    """The outcome of an attempt that ran its course, from what the run recorded."""
    metrics = run.final_metrics or {}
    loss = metrics.get("loss")
    where = f"step {metrics.get('step', '?')}/{metrics.get('total_steps', '?')}"
    return AttemptOutcome(
        job_id=job_id, fence=fence, status=status, reason=f"run {run.id} {status} at {where}", run_id=run.id,
        step=metrics.get("step"), total_steps=metrics.get("total_steps"),
        loss=loss if isinstance(loss, float) else None, adapter_path=run.adapter_path,
        adapter_id=adapter.id if adapter is not None else None,
        verdict=adapter.verdict if adapter is not None else None,
        error=run.error if status == AttemptStatus.FAILED else None)
