"""The supervisor: the whole path of a job, top to bottom.

``run_daemon(workspace)``
  1. takes the workspace's lock (one daemon per workspace) and registers as a worker;
  2. recovers what a previous daemon of this workspace left: jobs whose trainer is gone
     go back to the queue (they continue from their last checkpoint), inbox files it had
     moved but not ingested are ingested;
  3. loops until asked to stop:
       - complete inbox files become datasets and jobs;
       - with a ``STOP`` file present, or outside the training window, nothing starts;
       - otherwise it claims the next job (a queued one, or one whose lease ran out
         because its daemon, perhaps on another machine, died) and supervises one
         attempt in a trainer process: renewing the job's lease, watching the trainer's
         heartbeat, halting it when the window closes or the daemon stops, killing it
         when it hangs, or when the job was taken over after all (then it records
         nothing more: the job is someone else's);
       - then settles the job from how the attempt ended: succeeded, paused, skipped,
         stopped, cancelled, back to the queue (interrupted, or crashed with attempts
         left, after a backoff), or failed with the reason;
       - with nothing queued, the idle policy may write data into the inbox;
  4. on SIGTERM or Ctrl-C: the trainer checkpoints at its next step and exits, its job
     goes back to the queue, the lock is released.

The daemon never trains in its own process: a trainer that runs out of memory, hits a
segfault or raises costs one attempt, not the daemon.

Several daemons (one per workspace, on one machine or many) may share a PostgreSQL
store. Each claim of a job carries a fencing token (``JobInfo.fence``): the daemon and
its trainer pass it with every write they make for that job, and the store refuses
them (StaleClaimError) once the job was taken over by another daemon.

Longer than most modules on purpose: it is the whole path of a job, read top to bottom
in one file; the attempt, the spare trainer and the idle policy are in their own modules.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from honed.daemon.attempt import EXIT_CLAIM_LOST
from honed.daemon.idle import IdlePolicy
from honed.daemon.inbox import Inbox
from honed.daemon.launch import TRAINER_MODULE, launch_command, rendezvous_id
from honed.daemon.lease import LeaseKeeper
from honed.daemon.lock import DaemonLock
from honed.daemon.outcome import AttemptOutcome, read_outcome
from honed.daemon.schedule import backoff_delay, in_window, parse_window
from honed.daemon.spare import SpareTrainer
from honed.states import AttemptStatus, JobState
from honed.store import JobInfo, StaleClaimError, StoreError, StoreUnavailableError
from honed.workspace import Workspace

log = logging.getLogger("honed.daemon")

WORKER_BEAT_S = 2.0
# The daemon's writes wait this long for a SQLite writer (say, a hung trainer holding its
# lock) before giving up and trying again on the next turn, so supervision never stalls.
DAEMON_BUSY_TIMEOUT_S = 5.0


def run_daemon(workspace: Workspace) -> None:
    """Run the daemon for ``workspace`` in this process until SIGTERM or Ctrl-C.
    Raises DaemonAlreadyRunning when another daemon holds the workspace."""
    worker = f"{socket.gethostname()}:{os.getpid()}:{datetime.now(UTC):%Y%m%dT%H%M%S}"
    lock = DaemonLock(workspace.root)
    lock.acquire(worker)
    store = workspace.open_store(busy_timeout_s=DAEMON_BUSY_TIMEOUT_S)
    try:
        store.register_worker(worker, socket.gethostname(), os.getpid(), str(workspace.root))
        supervisor = Supervisor(workspace, store, worker)
        signal.signal(signal.SIGTERM, supervisor.on_signal)
        signal.signal(signal.SIGINT, supervisor.on_signal)
        supervisor.run()
    finally:
        try:
            store.beat_worker(worker, {"activity": "stopped"}, stopped=True)
        except StoreError as exc:
            log.warning("could not record the daemon's stop: %s", exc)
        store.close()
        lock.release()
        log.info("daemon %s stopped", worker)


class Supervisor:
    """The loop of one daemon: inbox → queue → trainer processes."""

    def __init__(self, workspace: Workspace, store, worker: str) -> None:
        self.ws = workspace
        self.store = store
        self.worker = worker
        self.cfg = workspace.settings.daemon
        self.window = parse_window(self.cfg.training_window)
        self.inbox = Inbox(workspace, store, settle_s=self.cfg.settle_s, priority=self.cfg.inbox_priority,
                           use_events=self.cfg.watcher == "auto")
        self.stopping: str | None = None
        self.force = False
        self.last_beat = 0.0
        self.activity = "starting"
        self.current: JobInfo | None = None
        self.lease = LeaseKeeper(store, self.cfg.lease_s, on_lost=self.inbox.wake)
        self.trainer_module = os.environ.get("HONED_TRAINER_MODULE") or TRAINER_MODULE
        self.spare = SpareTrainer(lambda: self.trainer_command("--warm"), workspace.logs_dir / "trainers.log",
                                  enabled=self.cfg.warm_trainer)
        self.idle = IdlePolicy(workspace, store)
        self.collected_at: float | None = None  # monotonic time of the last collection by policy
        self.artefacts: int | None = None  # bytes of honed's artefacts, measured at that collection
        self.told_waiting: set[int] = set()  # queued jobs told why the disk holds them

    def on_signal(self, signum, frame) -> None:
        """First SIGTERM/SIGINT: stop gracefully. A second: do not wait for the trainer."""
        if self.stopping:
            self.force = True
        self.stopping = signal.Signals(signum).name
        self.inbox.wake()

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Recover, then take inbox files and jobs until asked to stop."""
        from honed.learning.loop import LearningThread, any_enabled

        mode = self.inbox.start()
        log.info("daemon %s watching %s (%s)", self.worker, self.inbox.root, mode)
        learning = LearningThread(self.ws) if any_enabled(self.ws.settings) else None
        self.lease.start()
        try:
            self.recover()
            if learning is not None:
                learning.start()
                log.info("learning loop on: experiences become training jobs as [learn] says")
            while not self.stopping:
                try:
                    self.step()
                except StoreError as exc:  # the daemon outlives a store that is away for a while
                    log.error("store error, retrying: %s", exc)
                    self.inbox.wait(max(self.cfg.poll_interval_s, 2.0))
        finally:
            self.lease.stop()
            if learning is not None:
                learning.stop()
            self.inbox.stop()
            self.spare.drop()

    def step(self) -> None:
        """One turn of the loop: inbox, collection by policy, then at most one job."""
        self.tick()
        self.collect_if_due()
        blocked = self.why_not_train()
        if blocked:
            self.set_activity(blocked)
            self.tell_waiting(blocked)
            self.inbox.wait(self.cfg.poll_interval_s)
            return
        self.told_waiting.clear()
        self.spare.ensure()
        from honed.training.runs import new_run_id

        job = self.store.claim_next_job(self.worker, new_run_id(), self.cfg.lease_s)
        if job is None:
            self.set_activity("idle")
            self.idle()
            self.inbox.wait(self.cfg.poll_interval_s)
            return
        self.supervise(job)

    def tick(self) -> None:
        """Between everything else: take complete inbox files, beat the heart."""
        for outcome in self.inbox.take_ready():
            log.info("inbox: %s", outcome.message)
        if time.monotonic() - self.last_beat >= WORKER_BEAT_S:
            self.last_beat = time.monotonic()
            state = {"activity": self.activity, "job": self.current.id if self.current else None}
            self.store.beat_worker(self.worker, state)

    def why_not_train(self) -> str | None:
        """Why no job may start now, or None."""
        from honed.retention import space_problem

        if self.ws.stop_file.exists():
            return f"halted: {self.ws.stop_file} exists"
        if not in_window(self.window):
            return f"waiting for the training window {self.window}"
        return space_problem(self.ws, self.artefacts)

    def collect_if_due(self) -> None:
        """Collect by the [storage] policy every ``storage.gc_every_s`` (at once when the
        daemon starts), and measure the artefacts when ``storage.max_gb`` caps them."""
        from honed.retention import artefact_bytes, collect

        every = self.ws.settings.storage.gc_every_s
        if not every or (self.collected_at is not None and time.monotonic() - self.collected_at < every):
            return
        self.collected_at = time.monotonic()
        try:
            done = collect(self.ws, self.store)
        except OSError as exc:
            log.warning("gc by policy failed: %s", exc)
            return
        if done.removed:
            log.info("gc by policy: removed %d items (%.1f MiB)", len(done.removed),
                     sum(r.bytes for r in done.removed) / 2**20)
        if self.ws.settings.storage.max_gb:
            self.artefacts = artefact_bytes(self.ws)

    def tell_waiting(self, reason: str) -> None:
        """Say in the next queued job's events, once, why the disk keeps it waiting."""
        if "storage." not in reason:
            return
        waiting = self.store.list_jobs(states=("queued",), limit=1)
        if waiting and waiting[0].id not in self.told_waiting:
            self.told_waiting.add(waiting[0].id)
            self.record_event(waiting[0].id, "waiting_for_disk", reason)

    def set_activity(self, activity: str) -> None:
        if activity != self.activity:
            log.info("daemon: %s", activity)
            self.activity = activity
            self.last_beat = 0.0  # tell the store now

    # --- one attempt -----------------------------------------------------------------

    def supervise(self, job: JobInfo) -> None:
        """Run one attempt at ``job`` in a trainer process and settle the job, renewing
        its lease meanwhile. A job taken over by another daemon is let go."""
        self.current = job
        self.lease.hold(job)
        self.set_activity(f"training job {job.id}")
        trainer: subprocess.Popen | None = None
        try:
            ooms = oom_kills()
            trainer = self.start_trainer(job)
            killed = self.watch(job, trainer)
            if killed is None and trainer.returncode == -signal.SIGKILL and oom_kills() > ooms:
                killed = OOM_KILLED
            while True:  # the outcome must be recorded, even if the store is away for a while
                try:
                    self.settle(job, trainer.returncode, killed)
                    break
                except StoreUnavailableError as exc:
                    log.error("job %d: cannot record how the attempt ended, retrying: %s", job.id, exc)
                    time.sleep(max(self.cfg.poll_interval_s, 1.0))
        except StaleClaimError as exc:
            self.let_go(job, trainer, exc)
        finally:
            self.lease.release()
            self.current = None

    def watch(self, job: JobInfo, trainer: subprocess.Popen) -> str | None:
        """Watch the trainer until it exits; returns why it was killed, if it was.
        StaleClaimError as soon as the lease keeper finds the job taken over."""
        threading.Thread(target=lambda: (trainer.wait(), self.inbox.wake()), daemon=True).start()
        halted_at: float | None = None
        killed: str | None = None
        while trainer.poll() is None:
            if self.lease.lost is not None:
                raise self.lease.lost
            try:
                self.tick()
            except StoreError as exc:  # keep watching the trainer whatever the store does
                log.warning("job %d: %s", job.id, exc)
            reason = self.why_halt()
            if reason and halted_at is None:
                log.info("job %d: halting the trainer (%s)", job.id, reason)
                self.record_event(job.id, "halting", reason, fence=job.fence)
                _halt_trainer(trainer)
                halted_at = time.monotonic()
            if halted_at is not None and (self.force or time.monotonic() - halted_at > self.cfg.stop_grace_s):
                killed = killed or "did not halt in time"
                _kill_trainer(trainer, wait=False)
            stale = self.heartbeat_age(job.id)
            if stale is not None and stale > self.cfg.heartbeat_timeout_s and not killed:
                limit = self.cfg.heartbeat_timeout_s
                killed = f"no heartbeat for {stale:.0f}s (daemon.heartbeat_timeout_s = {limit:g})"
                log.error("job %d: trainer %d %s; killing it", job.id, trainer.pid, killed)
                _kill_trainer(trainer, wait=False)
            self.inbox.wait(self.cfg.poll_interval_s)
        return killed

    def let_go(self, job: JobInfo, trainer: subprocess.Popen | None, exc: StaleClaimError) -> None:
        """The job was taken over: this daemon's claim on it is over. Its trainer is killed
        outright (asked to halt, it would write a checkpoint) and nothing more is written
        about the job: its new owner records what happens to it."""
        log.error("job %d: lost to another worker, stopping its trainer and recording nothing more: %s",
                  job.id, exc)
        if trainer is not None:
            _kill_trainer(trainer)

    def record_event(self, job_id: int, kind: str, message: str, fence: int | None = None) -> None:
        """Append a job event; one that fails is logged, except a refusal of ``fence``
        (StaleClaimError: the job is no longer ours), which the caller must see."""
        try:
            self.store.add_job_event(job_id, kind, message, fence=fence)
        except StaleClaimError:
            raise
        except StoreError as exc:
            log.warning("job %d: event not recorded (%s): %s", job_id, exc, message)

    def why_halt(self) -> str | None:
        """Why a running trainer must halt now (it checkpoints; the job is queued again)."""
        if self.stopping:
            return f"the daemon is stopping ({self.stopping})"
        if not in_window(self.window):
            return f"the training window {self.window} closed"
        return None

    def heartbeat_age(self, job_id: int) -> float | None:
        """Seconds since the trainer's last heartbeat (a read: it works while a hung
        trainer holds SQLite's write lock); None when unknown."""
        try:
            job = self.store.get_job(job_id)
        except StoreError as exc:
            log.warning("job %d: heartbeat unreadable (%s)", job_id, exc)
            return None
        if job.heartbeat_at is None:
            return None
        return (datetime.now(UTC) - job.heartbeat_at).total_seconds()

    def job_log(self, job_id: int) -> Path:
        return self.ws.logs_dir / "jobs" / f"job-{job_id}.log"

    def start_trainer(self, job: JobInfo) -> subprocess.Popen:
        """Hand the job to the warm spare trainer, or start a fresh one; a job of several
        processes (``train.nproc``, ``train.nnodes``) starts under torchrun
        (:mod:`honed.daemon.launch`), this machine being node 0."""
        log_path = self.job_log(job.id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        world = self.world_of(job)
        nproc, nnodes = world["nproc"], world["nnodes"]
        trainer = None
        if nproc * nnodes == 1:
            trainer = self.spare.hand_over(f"job {job.id} fence={job.fence} {log_path}")
        if trainer is None:
            command = self.trainer_command("--job", str(job.id), "--fence", str(job.fence))
            if nproc * nnodes > 1:
                command = launch_command(nproc, *command[3:], module=self.trainer_module, nnodes=nnodes,
                                         rdzv_endpoint=world["rdzv_endpoint"], rdzv_id=rendezvous_id(job.id, job.fence),
                                         rdzv_timeout_s=world["rdzv_timeout_s"])
            with open(log_path, "ab") as out:
                trainer = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                           start_new_session=True)
        what = (f"trainer process {trainer.pid}" if nproc * nnodes == 1
                else f"trainer in {nproc} processes under torchrun (pid {trainer.pid})")
        if nnodes > 1:
            what += (f" as node 0 of {nnodes}, waiting up to {world['rdzv_timeout_s']} s at "
                     f"{world['rdzv_endpoint']} for 'honed node' on the other machines to join,")
        try:
            self.store.report_progress(job.id, None, trainer_pid=trainer.pid, fence=job.fence)
            self.store.add_job_event(job.id, "trainer", f"{what} started on run {job.run_id} "
                                     f"(log: {log_path})", {"pid": trainer.pid, "run_id": job.run_id,
                                                            "fence": job.fence, **world}, fence=job.fence)
        except StaleClaimError:
            _kill_trainer(trainer)
            raise
        return trainer

    def world_of(self, job: JobInfo) -> dict:
        """Where the job's trainer processes run: ``nproc``, ``nnodes``, ``rdzv_endpoint``
        and ``rdzv_timeout_s`` of the job's run once planned (an attempt trains as the run
        began), else of its settings; one process when they are broken (the trainer says
        why)."""
        from honed.config import SettingsError
        from honed.config.models import TrainSettings
        from honed.workspace import WorkspaceError, open_workspace

        keys = ("nproc", "nnodes", "rdzv_endpoint", "rdzv_timeout_s")
        run = self.store.get_run(job.run_id) if job.run_id else None
        if run is not None:
            planned = run.config.get("train", {})
            return {key: planned.get(key, TrainSettings.model_fields[key].default) for key in keys}
        try:
            train = open_workspace(self.ws.root, job.overrides).settings.train
        except (SettingsError, WorkspaceError):
            train = TrainSettings()
        return {key: getattr(train, key) for key in keys}

    def trainer_command(self, *args: str) -> list[str]:
        """The command line of a trainer process. ``HONED_TRAINER_MODULE`` names another
        module to run instead of :mod:`honed.daemon.trainer_process`, with the same
        arguments: a test seam for supervising (claims, leases, settling) without
        training."""
        return [sys.executable, "-m", self.trainer_module, "--workspace", str(self.ws.root),
                "--parent", str(os.getpid()), *args]

    # --- settling a job ----------------------------------------------------------------

    def settle(self, claimed: JobInfo, returncode: int, killed: str | None = None) -> JobInfo:
        """Move the job on from how its attempt ended: the outcome its trainer recorded,
        or (when it recorded none: killed, out of memory) its exit status. Every write
        carries the claim's fence: StaleClaimError when the job was taken over meanwhile
        (its new owner settles it)."""
        job = self.store.check_claim(claimed.id, claimed.fence)
        if killed == OOM_KILLED:
            return self.shrink_micro_batch(job, killed)
        outcome = None if killed else read_outcome(self.ws.root, self.store, job.id, job.fence)
        return self.settle_outcome(job, outcome, exit_reason=killed or _describe_exit(returncode),
                                   returncode=returncode)

    def settle_outcome(self, job: JobInfo, outcome: AttemptOutcome | None, *, exit_reason: str = "",
                       returncode: int | None = None) -> JobInfo:
        """The one place that decides a job's next state from an attempt's outcome."""
        def end(state: JobState, message: str, **kwargs) -> JobInfo:
            return self.store.end_attempt(job.id, state, message, fence=job.fence, **kwargs)

        where = outcome.where if outcome is not None else ""
        data = ({"run_id": outcome.run_id, "step": outcome.step, "adapter": outcome.adapter_path}
                if outcome is not None else {})
        match outcome:
            case None:
                return self.retry_or_fail(job, exit_reason, returncode)
            case AttemptOutcome(status=AttemptStatus.CRASHED):
                return self.retry_or_fail(job, f"{exit_reason}: {outcome.reason}", returncode)
            case AttemptOutcome(status=AttemptStatus.OUT_OF_MEMORY):
                return self.shrink_micro_batch(job, outcome.reason)
            case AttemptOutcome(status=AttemptStatus.DISK_FULL):
                last = self.store.latest_checkpoint(job.run_id) if job.run_id else None
                since = f"the checkpoint at step {last.step}" if last else "the start"
                return end(JobState.PAUSED, f"{outcome.reason}; free space there ('honed gc --dry-run' shows what "
                           f"honed can free), then 'honed resume {job.id}' continues from {since}",
                           error=outcome.reason, data=data)
            case AttemptOutcome(status=AttemptStatus.UNTRAINABLE):
                return end(JobState.FAILED, outcome.reason, error=outcome.reason)
            case AttemptOutcome(status=AttemptStatus.SUCCEEDED):
                self.mark_experiences_trained(job, outcome.run_id)
                return self.settle_candidate(job, outcome, f"run {outcome.run_id} finished at {where}", data)
            case AttemptOutcome(status=AttemptStatus.STOPPED):
                return self.settle_candidate(
                    job, outcome, f"stopped at {where}; the adapter from that point is the result", data)
            case AttemptOutcome(status=AttemptStatus.CANCELLED):
                return end(JobState.CANCELLED, f"cancelled at {where}; no result", data=data)
            case AttemptOutcome(status=AttemptStatus.PAUSED):
                return end(JobState.PAUSED, f"paused at {where}; checkpoint kept, 'honed resume {job.id}' "
                           "continues from there", data=data)
            case AttemptOutcome(status=AttemptStatus.SKIPPED):
                return end(JobState.SKIPPED, f"set aside at {where}; 'honed resume {job.id}' brings it back",
                           data=data)
            case AttemptOutcome(status=AttemptStatus.INTERRUPTED):
                return end(JobState.QUEUED, f"interrupted at {where}; it continues from that checkpoint when "
                           "the daemon next runs it", kind="requeued", data=data)
            case AttemptOutcome(status=AttemptStatus.FAILED):
                reason = (outcome.error or "failed").splitlines()[0]
                return end(JobState.FAILED, f"run {outcome.run_id} failed at {where}: {reason}",
                           error=outcome.error, data=data)
        raise AssertionError(f"unhandled attempt outcome {outcome!r}")

    def retry_or_fail(self, job: JobInfo, reason: str, returncode: int | None) -> JobInfo:
        """A crashed attempt: back to the queue after a backoff, or failed after
        ``daemon.max_attempts``."""
        failures = job.failures + 1
        data = {"attempt": failures, "returncode": returncode}
        if failures >= self.cfg.max_attempts:
            message = f"attempt {failures} failed ({reason}); giving up after {failures} attempts"
            log.error("job %d: %s", job.id, message)
            return self.store.end_attempt(job.id, JobState.FAILED, message, failed=True, error=reason, data=data,
                                          fence=job.fence)
        delay = backoff_delay(failures, self.cfg.backoff_s, self.cfg.backoff_max_s)
        left = self.cfg.max_attempts - failures
        message = (f"attempt {failures} failed ({reason}); retrying in {delay:g}s from the last checkpoint "
                   f"({left} attempt{'s' if left > 1 else ''} left)")
        log.warning("job %d: %s", job.id, message)
        return self.store.end_attempt(job.id, JobState.QUEUED, message, kind="attempt_failed", failed=True,
                                      error=reason, not_before=datetime.now(UTC) + timedelta(seconds=delay),
                                      data=data, fence=job.fence)

    def shrink_micro_batch(self, job: JobInfo, reason: str) -> JobInfo:
        """An attempt out of memory: the next one splits the same global batch into
        micro-batches half as large (twice the accumulation), at once and without counting
        a failure; at a micro-batch of 1 the job fails with the reason."""
        size, accum = self.micro_batch_of(job)
        if size <= 1:
            message = (f"out of memory at micro-batch 1 ({reason}): lower train.max_seq_len, give the trainer "
                       "more memory (daemon.trainer_memory_mb) or train a smaller base")
            return self.store.end_attempt(job.id, JobState.FAILED, message, error=message, fence=job.fence)
        smaller = max(d for d in range(1, size // 2 + 1) if size % d == 0)
        more = accum * (size // smaller)
        overrides = {**job.overrides, "train": {**job.overrides.get("train", {}), "batch_size": smaller,
                                                "grad_accum": more}}
        message = (f"out of memory at micro-batch {size} x {accum} accumulation ({reason}); the next attempt "
                   f"trains with {smaller} x {more}, the same {size * accum} examples per step")
        log.warning("job %d: %s", job.id, message)
        return self.store.end_attempt(job.id, JobState.QUEUED, message, kind="out_of_memory", overrides=overrides,
                                      data={"batch_size": smaller, "grad_accum": more, "was": [size, accum]},
                                      fence=job.fence)

    def micro_batch_of(self, job: JobInfo) -> tuple[int, int]:
        """The micro-batch and accumulation the job's last attempt trained with: the
        settings', an earlier shrink's, or what the attempt chose to fit memory."""
        from honed.config import TrainSettings
        from honed.workspace import open_workspace

        run = self.store.get_run(job.run_id) if job.run_id else None
        train = (TrainSettings(**run.config["train"]) if run is not None
                 else open_workspace(self.ws.root, job.overrides).settings.train)
        train = train.with_micro_batch(job.overrides.get("train", {}))
        chosen = [e for e in self.store.job_events(job.id) if e.kind in ("memory_plan", "out_of_memory")]
        if chosen and chosen[-1].kind == "memory_plan":  # the last attempt fitted its own after the last shrink
            train = train.with_micro_batch(chosen[-1].data)
        return train.batch_size, train.grad_accum

    def mark_experiences_trained(self, job: JobInfo, run_id: str | None) -> None:
        """Experiences assembled into a succeeded run's datasets are now trained, once."""
        run = self.store.get_run(run_id) if run_id else None
        if run is None:
            return
        marked = self.store.mark_experiences_trained(run.id, run.dataset_ids)
        if marked:
            self.record_event(job.id, "learned", f"{marked} experiences marked as trained by run {run.id}",
                              fence=job.fence)

    def settle_candidate(self, job: JobInfo, outcome: AttemptOutcome, how: str, data: dict) -> JobInfo:
        """After training and evaluation: deploy a candidate that passed its gates, leave
        one awaiting approval, or end the job rejected with the numbers that failed it."""
        from honed.registry.deployment import DeployError, deploy

        adapter = self.store.get_adapter(outcome.adapter_id) if outcome.adapter_id is not None else None
        if adapter is None or adapter.verdict is None:
            return self.store.end_attempt(job.id, "succeeded", f"{how}; adapter {outcome.adapter_path} "
                                          "(not evaluated)", data=data, fence=job.fence)
        data = {**data, "adapter": adapter.id}
        if adapter.state == "rejected":
            reasons = "; ".join(adapter.verdict.get("failed", []))
            return self.store.end_attempt(job.id, "rejected", f"{how}; adapter {adapter.id} failed its gates: "
                                          f"{reasons}; the deployment stays as it was", error=reasons, data=data,
                                          fence=job.fence)
        if adapter.state == "awaiting_approval":
            held = adapter.verdict.get("held")
            why = (f"was held by its gates ({'; '.join(held)}) and" if held else "passed its gates and")
            return self.store.end_attempt(job.id, "succeeded", f"{how}; adapter {adapter.id} {why} "
                                          f"awaits approval: 'honed approve {adapter.id}'", data=data,
                                          fence=job.fence)
        # Still ours, and for a whole lease more: a daemon that lost the job must not deploy.
        self.store.renew_lease(job.id, job.fence, self.cfg.lease_s)
        try:
            result = deploy(self.ws, self.store, adapter.id, reason=f"passed its gates (job {job.id})")
        except DeployError as exc:
            return self.store.end_attempt(job.id, "succeeded", f"{how}; adapter {adapter.id} passed its gates "
                                          f"but was not deployed: {exc}", data=data, fence=job.fence)
        hooks = "" if result.hooks_ok else "; a deploy hook failed: " + "; ".join(
            h["detail"] for h in result.hooks if not h["ok"])
        return self.store.end_attempt(job.id, "succeeded", f"{how}; adapter {adapter.id} passed its gates and "
                                      f"is deployed as {adapter.name}{hooks}", kind="deployed", data=data,
                                      fence=job.fence)

    # --- recovery and idle time --------------------------------------------------------

    def recover(self) -> None:
        """Settle jobs a previous daemon of this workspace left running, and inbox files
        it left half-taken. Their trainers notice their daemon is gone and checkpoint.

        Jobs held by daemons of other workspaces are left to their leases: while one is
        renewed its daemon lives, and once it runs out the next claim takes the job over.
        The writes here carry the dead claim's fence, so a job that another daemon took
        over meanwhile is left to it."""
        from honed.registry.deployment import sync_pointer

        for track in self.store.list_tracks():  # a switch cut short leaves the pointer behind
            sync_pointer(self.ws, self.store, track.name)
        for outcome in self.inbox.recover():
            log.info("inbox recovery: %s", outcome.message)
        for job in self.store.list_jobs(states=("running", "evaluating")):
            if job.worker == self.worker or not self.is_ours(job.worker):
                continue
            self.wait_for_orphan(job)
            try:
                outcome = read_outcome(self.ws.root, self.store, job.id, job.fence)
                if outcome is not None and outcome.status not in (AttemptStatus.CRASHED, AttemptStatus.INTERRUPTED):
                    settled = self.settle_outcome(job, outcome)  # it ended on its own, or as commanded
                else:
                    settled = self.store.end_attempt(
                        job.id, "queued", "recovered after the daemon restarted; it continues from its last "
                        "checkpoint", kind="recovered", fence=job.fence)
            except StaleClaimError as exc:
                log.info("job %d: not recovered, another worker has it: %s", job.id, exc)
                continue
            log.info("recovered job %d: now %s", job.id, settled.state)

    def is_ours(self, worker_id: str | None) -> bool:
        """Whether a job's worker was a daemon of this workspace (so it is dead: we hold
        the workspace's lock). A worker the store does not know counts as ours: nothing
        else would ever settle its job."""
        worker = self.store.get_worker(worker_id) if worker_id is not None else None
        return worker is None or worker.workspace == str(self.ws.root)

    def wait_for_orphan(self, job: JobInfo) -> None:
        """Give a trainer that outlived its daemon time to checkpoint and exit."""
        pid = job.trainer_pid
        if not pid:
            return
        try:
            proc = psutil.Process(pid)
            if not any(self.trainer_module in part for part in proc.cmdline()):
                return
        except psutil.Error:
            return
        log.info("job %d: waiting for its orphaned trainer %d to checkpoint and exit", job.id, pid)
        try:
            proc.wait(timeout=self.cfg.stop_grace_s)
        except psutil.TimeoutExpired:
            proc.kill()


def _ranks(trainer: subprocess.Popen) -> dict[int, psutil.Process]:
    """The processes torchrun started for a trainer, by LOCAL_RANK (none for one process)."""
    found = {}
    try:
        children = psutil.Process(trainer.pid).children()
    except psutil.Error:
        return found
    for child in children:
        try:
            found[int(child.environ().get("LOCAL_RANK", ""))] = child
        except (psutil.Error, ValueError):
            continue
    return found


def _halt_trainer(trainer: subprocess.Popen) -> None:
    """Ask a trainer to checkpoint and exit (SIGTERM). Under torchrun the signal goes to
    rank 0, which decides for all ranks at the next step; torchrun itself would take a
    SIGTERM as a failure and end every rank without a checkpoint."""
    rank0 = _ranks(trainer).get(0)
    with contextlib.suppress(psutil.Error, OSError):
        (rank0.send_signal if rank0 is not None else trainer.send_signal)(signal.SIGTERM)


def _kill_trainer(trainer: subprocess.Popen, wait: bool = True) -> None:
    """SIGKILL a trainer (and wait for it). It leads its own process group (it was started
    in a session of its own): any children it started go with it, and torchrun's ranks,
    which have sessions of their own, are killed one by one."""
    if trainer.poll() is None:
        for rank in _ranks(trainer).values():
            with contextlib.suppress(psutil.Error):
                rank.kill()
        try:
            os.killpg(trainer.pid, signal.SIGKILL)
        except OSError:
            trainer.kill()
    if wait:
        trainer.wait()


OOM_KILLED = "killed by the kernel's out-of-memory killer"


def oom_kills() -> int:
    """How many processes the kernel's out-of-memory killer has killed: on this host
    (``/proc/vmstat``) plus in this process's cgroup (``memory.events``), so that a
    trainer's SIGKILL can be told apart from one sent by a person; 0 where neither is
    readable."""
    total = 0
    for path, key in ((Path("/proc/vmstat"), "oom_kill"), (Path("/sys/fs/cgroup/memory.events"), "oom_kill")):
        try:
            for line in path.read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == key:
                    total += int(value)
        except (OSError, ValueError):
            continue
    return total


def _describe_exit(returncode: int) -> str:
    if returncode == EXIT_CLAIM_LOST:
        return "the trainer stopped because the store refused its writes as stale"
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory, or killed from outside)" if name == "SIGKILL" else ""
        return f"the trainer was killed by {name}{hint}"
    return f"the trainer exited with code {returncode}"
