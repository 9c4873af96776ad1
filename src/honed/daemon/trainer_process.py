"""The trainer process: one attempt at one job, in a child of the daemon.

``python -m honed.daemon.trainer_process --workspace WS --parent PID --job N --fence F``
runs an attempt at once; with ``--warm`` instead of ``--job`` it imports torch and the
training code first, then waits for a line ``job N fence=F LOGPATH`` on stdin (the daemon
keeps one such process ready so that a job starts training without the import delay; end
of input means "not needed", and it exits).

``F`` is the fence of the daemon's claim on the job: every write the trainer makes about
the job carries it, and once the store refuses one (the job was taken over by another
daemon after this one's lease ran out) the trainer stops at once, writing nothing more.

Every attempt it can end, it ends by recording one
:class:`~honed.daemon.outcome.AttemptOutcome` (to a file, then through the store): how
it ended, why, how far it got, the adapter and its verdict. The daemon settles the job
from that record alone. The exit status says the same for people reading a process
list: 0 for an outcome recorded, 3 when the job cannot be trained at all, 1 for a
crash, 4 when the store refused its writes as stale (its claim or attempt is no longer
the job's: then it records nothing at all).

Before it loads a model on an accelerator it claims that device (see
:mod:`honed.device_claims`) and waits, at most ``server.yield_timeout_s``, until the
servers using it have released their models; the claim ends with the attempt.

Between optimizer steps it asks, in order: is there a ``STOP`` file (halt: checkpoint
and exit, job back to the queue), is the daemon gone or did it send SIGTERM (the same),
is there a control command for this job in the store (pause, stop, skip, cancel).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import psutil

from honed.daemon.outcome import AttemptOutcome, record_outcome
from honed.states import AttemptStatus, Command, RunStatus

log = logging.getLogger("honed.trainer")

EXIT_CRASHED = 1
EXIT_UNTRAINABLE = 3
EXIT_CLAIM_LOST = 4
PROGRESS_EVERY_S = 1.0


class ClaimLost(BaseException):
    """Raised where the store refused this trainer's claim, from inside the training loop.
    A BaseException so that it passes the training code's ``except Exception`` (which
    would record a failed attempt: a write for a job that is no longer ours) straight
    up to :func:`run_attempt`, which exits with EXIT_CLAIM_LOST."""


class FencedRunStore:
    """The store as the training code sees it. Starting an attempt of the run checks, in
    the same transaction, that this trainer's claim still holds the job, so a trainer that
    slept through a takeover cannot start an attempt that would shut out the new owner's.
    And any write refused as stale raises ClaimLost: the training code's crash handler
    would otherwise record the failure under the run's *current* attempt, the new owner's."""

    def __init__(self, store, job_id: int, fence: int | None) -> None:
        self._store = store
        self._job_id = job_id
        self._fence = fence

    def start_attempt(self, run_id: str) -> int:
        return self._refusing_stale(self._store.start_attempt)(run_id, job_id=self._job_id, fence=self._fence)

    def __getattr__(self, name: str):
        attr = getattr(self._store, name)
        return self._refusing_stale(attr) if callable(attr) else attr

    @staticmethod
    def _refusing_stale(method):
        from honed.store import StaleAttemptError

        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except StaleAttemptError as exc:  # StaleClaimError too
                raise ClaimLost(str(exc)) from exc
        return call


class JobControl:
    """The trainer's ``control(step)``: emergency brake, supervisor and store commands.

    The store is asked on every step (a read; a write only when a command waits);
    when it cannot be reached the step goes on, and the STOP file still halts it.
    """

    def __init__(self, workspace, store, job_id: int, parent_pid: int | None, fence: int | None = None) -> None:
        self.workspace = workspace
        self.store = store
        self.job_id = job_id
        self.parent_pid = parent_pid
        # Under torchrun the parent is torchrun's agent, itself a child of the daemon.
        self.launcher = os.getppid()
        self.fence = fence
        self.signalled: str | None = None
        self.interrupted: str | None = None  # why the trainer halted without a command
        self.taken: Command | None = None  # the store command that halted it

    def on_signal(self, signum, frame) -> None:
        self.signalled = signal.Signals(signum).name

    def __call__(self, step: int) -> str | None:
        from honed.store import StaleClaimError, StoreError

        if self.workspace.stop_file.exists():
            self.interrupted = "halted by the STOP file"
            return "pause"
        if self.parent_pid is not None and (os.getppid() != self.launcher or not psutil.pid_exists(self.parent_pid)):
            self.interrupted = "the daemon is gone"
            return "pause"
        if self.signalled:
            self.interrupted = f"the daemon asked the trainer to halt ({self.signalled})"
            return "pause"
        try:
            command = self.store.take_command(self.job_id, step, fence=self.fence)
        except StaleClaimError as exc:
            raise ClaimLost(str(exc)) from exc
        except StoreError as exc:
            log.warning("job %d: cannot read control commands (%s); training on", self.job_id, exc)
            return None
        if command in (Command.PAUSE, Command.SKIP, Command.STOP, Command.CANCEL):
            self.taken = Command(command)
            return "pause" if command == Command.SKIP else str(command)  # a skip halts as a pause does
        return None

    def attempt_status(self, run_status: RunStatus) -> AttemptStatus:
        """How the attempt ended, from the run's status and what halted it."""
        if run_status != RunStatus.PAUSED:
            return AttemptStatus(run_status)
        return {Command.PAUSE: AttemptStatus.PAUSED, Command.SKIP: AttemptStatus.SKIPPED}.get(
            self.taken, AttemptStatus.INTERRUPTED)


class ProgressReporter:
    """Writes the job's heartbeat with step, loss, tokens/s and ETA at most once a second."""

    def __init__(self, store, job_id: int, fence: int | None = None) -> None:
        self.store = store
        self.job_id = job_id
        self.fence = fence
        self.last = 0.0
        self.first: tuple[float, int] | None = None

    def __call__(self, row: dict) -> None:
        from honed.store import StaleClaimError, StoreError

        now = time.monotonic()
        if self.first is None:
            self.first = (now, row["step"] - 1)
        if now - self.last < PROGRESS_EVERY_S and row["step"] < row["total_steps"]:
            return
        self.last = now
        started, first_step = self.first
        done = row["step"] - first_step
        per_step = (now - started) / done if done > 0 else None
        progress = {
            "phase": "training", "step": row["step"], "total_steps": row["total_steps"],
            "loss": row["loss"], "tokens_per_s": round(row["tokens_per_s"], 1),
            "attempt": row["attempt"], "eta_s": round(per_step * (row["total_steps"] - row["step"]), 1)
            if per_step else None,
        }
        try:
            self.store.report_progress(self.job_id, progress, fence=self.fence)
        except StaleClaimError as exc:
            raise ClaimLost(str(exc)) from exc
        except StoreError as exc:
            log.warning("job %d: heartbeat not written (%s)", self.job_id, exc)


def claim_accelerator(workspace, store, job_id: int, fence: int | None = None):
    """Claim the device this attempt trains on when servers must give it up first
    (``server.yield_devices``), and wait until they have, at most
    ``server.yield_timeout_s``. Returns the claim to withdraw at the end (None: the
    device is shared, nothing to claim)."""
    from honed.device_claims import claim_device, describe_device
    from honed.store import StaleClaimError, StoreError
    from honed.training.model_loading import pick_device

    settings = workspace.settings.server
    device = pick_device()
    if device.type not in settings.yield_devices:
        return None
    name, uuid = describe_device(device)
    claim = claim_device(workspace.root, name, uuid, job_id)
    started = time.monotonic()
    waited_for = claim.holders()
    if not waited_for:
        return claim
    holding = claim.wait_for_release(settings.yield_timeout_s)
    if holding:
        message = (f"{len(holding)} server(s) (pid {', '.join(str(s.pid) for s in holding)}) did not release {name} "
                   f"within server.yield_timeout_s = {settings.yield_timeout_s:g} s; training anyway")
        log.warning("job %d: %s", job_id, message)
    else:
        message = f"{len(waited_for)} server(s) released {name} in {time.monotonic() - started:.1f} s"
        log.info("job %d: %s", job_id, message)
    try:
        store.add_job_event(job_id, "device", message, {"device": name, "servers": [s.pid for s in waited_for],
                                                        "still_holding": [s.pid for s in holding]}, fence=fence)
    except StaleClaimError:
        claim.withdraw()
        raise
    except StoreError as exc:
        log.warning("job %d: device event not written (%s)", job_id, exc)
    return claim


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
        outcome = AttemptOutcome(job_id=job_id, fence=fence, status=AttemptStatus.CRASHED,
                                 reason=f"{type(exc).__name__}: {exc}", error=traceback.format_exc())
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
                run_attempt_of(resume_spec(open_workspace(root, job.overrides), store, run_id), store, dist=dist)
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
            if job.run_id and store.get_run(job.run_id) is not None:
                spec = resume_spec(workspace, store, job.run_id)
            else:
                spec = prepare_run(workspace, store, job.dataset_ids, track=job.track, run_id=job.run_id)
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

        claim = claim_accelerator(workspace, store, job_id, fence)  # before any model loads: training or evaluating
        run = store.get_run(spec.run_id)
        if run is not None and RunStatus(run.status).has_adapter and run.adapter_path:
            # Trained already; an earlier attempt died while evaluating.
            dist.broadcast(None)
            adapter = evaluate_and_gate(workspace, store, job, run, spec.base, fence)
            return _ended(job_id, fence, AttemptStatus(run.status), run, adapter)
        log.info("job %d: attempt on run %s starts", job_id, spec.run_id)
        dist.broadcast(spec.run_id)
        try:
            trained = run_attempt_of(spec, FencedRunStore(store, job_id, fence), control=control,
                                     on_step=ProgressReporter(store, job_id, fence), on_checkpoint=on_checkpoint)
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


def warm_up(root: Path) -> None:
    """Do now what every attempt starts with: import torch, transformers, peft and the
    trainer, and load the default track's base (tokenizer and weights). A job on another
    base simply loads its own. On a device the server must give up first
    (``server.yield_devices``) the weights wait in CPU memory: a spare claims nothing,
    and the job moves them over once it has its claim."""
    import honed.evaluation.evaluate  # noqa: F401
    import honed.training.recipe  # noqa: F401
    from honed.store import StoreError
    from honed.training.model_loading import pick_device, preload
    from honed.workspace import WorkspaceError, open_workspace

    try:
        workspace = open_workspace(root)
        with workspace.open_store() as store:
            track = store.get_track(workspace.settings.track)
            base = workspace.resolve_base_path(store, track.base_version if track else None)
        device = pick_device()
        if device.type in workspace.settings.server.yield_devices:
            import torch

            device = torch.device("cpu")
        if workspace.settings.train.quantization == "none":  # a 4-bit load has no use for these weights
            preload(base, device)
        import peft  # noqa: F401

        log.info("warm trainer ready: %s preloaded", base)
    except (StoreError, WorkspaceError, OSError, ValueError) as exc:
        log.warning("warm-up could not preload the base (%s); the job will load it", exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m honed.daemon.trainer_process")
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--parent", type=int, default=None, help="pid of the supervising daemon")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--job", type=int)
    group.add_argument("--warm", action="store_true", help="import first, then read 'job N' from stdin")
    parser.add_argument("--fence", type=int, default=None, help="the fence of the daemon's claim on the job")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s trainer[%(process)d] %(levelname)s %(name)s: %(message)s")
    from honed.training.model_loading import quiet_libraries

    quiet_libraries()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    _lower_priority(args.workspace)
    job_id, fence = args.job, args.fence
    if args.warm:
        # While waiting, a SIGTERM from the daemon simply ends the spare.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        warm_up(args.workspace)
        line = sys.stdin.readline()
        if not line.startswith("job "):
            return 0
        job_id, fence, log_path = parse_job_line(line)
        if log_path:
            _redirect_output(Path(log_path))
    return run_attempt(args.workspace, job_id, args.parent, fence)


def parse_job_line(line: str) -> tuple[int, int | None, str | None]:
    """``job N [fence=F] [LOGPATH]`` (what the daemon writes to a warm trainer) as
    ``(N, F, LOGPATH)``; a missing fence or log path is None."""
    words = line.strip().split(maxsplit=2)
    rest = words[2] if len(words) > 2 else ""
    fence = None
    if rest.startswith("fence="):
        token, _, rest = rest.partition(" ")
        fence = int(token.removeprefix("fence="))
    return int(words[1]), fence, rest.strip() or None


def _lower_priority(root: Path) -> None:
    """Run at ``daemon.trainer_nice``: on a busy machine, interactive work answers first."""
    from honed.config import SettingsError, load_settings

    try:
        nice = load_settings(root).daemon.trainer_nice
    except SettingsError:
        return  # the attempt itself reports the bad setting
    if nice:
        os.nice(nice)


def _redirect_output(path: Path) -> None:
    """Send this process's stdout and stderr (fds 1 and 2) to the job's log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


if __name__ == "__main__":
    code = main()
    # Everything is written and closed by now; skip the interpreter's teardown of torch and
    # transformers (about a second) so the daemon can move on.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
