"""Fencing and control: the trainer's writes carry its claim, and it halts on command.

Every write a trainer makes about its job carries the fence of the daemon's claim; once
the store refuses one (the job was taken over by another daemon after this one's lease
ran out) the trainer stops at once, writing nothing more (:class:`ClaimLost`). Between
optimizer steps it asks, in order: is there a ``STOP`` file (halt: checkpoint and exit,
job back to the queue), is the daemon gone or did it send SIGTERM (the same), is there a
control command for this job in the store (pause, stop, skip, cancel).
"""

from __future__ import annotations

import logging
import os
import signal
import time

import psutil

from honed.states import AttemptStatus, Command, RunStatus

log = logging.getLogger("honed.trainer")

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
