"""A trainer that does not train, for tests of supervision across daemons (claims,
leases, fencing), where a real trainer's imports and steps would only cost time.

A daemon runs it instead of :mod:`honed.daemon.trainer_process` when
``HONED_TRAINER_MODULE=tests.daemon.fake_trainer``; it takes the same arguments
(``--workspace WS --parent PID --job N --fence F``; no ``--warm``: set
``daemon.warm_trainer = false``). It does what the daemon needs of a trainer, carrying
the claim's fence as the real one does: reports its pid, creates the job's run (or
continues it) and starts an attempt, then "trains" ``HONED_FAKE_TRAIN_S`` seconds (0.1 s
a step) with the real trainer's :class:`JobControl` and :class:`ProgressReporter` at
every step, and finishes the run succeeded, recording the attempt's outcome as the real
one does (:func:`honed.daemon.outcome.record_outcome`). With no adapter, the daemon
settles such a job "succeeded (not evaluated)". A write the store refuses as stale ends
it at once with ``EXIT_CLAIM_LOST``, writing nothing more.

To start in a fraction of a real trainer's time it loads no settings (only ``store.url``
from ``honed.toml``) and opens the store without checking its schema (its daemon did).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from honed.daemon.attempt import EXIT_CLAIM_LOST
from honed.daemon.fencing import ClaimLost, JobControl, ProgressReporter
from honed.daemon.outcome import AttemptOutcome, record_outcome
from honed.states import RunStatus

log = logging.getLogger("honed.trainer")

STEP_S = 0.1


def open_store_fast(root: Path):
    """The workspace's store, opened without settings or migrations."""
    import tomllib

    from honed.store import Store
    from honed.store.engine import create_engine, parse_url

    with open(root / "honed.toml", "rb") as fh:
        url = parse_url(tomllib.load(fh)["store"]["url"])
    return Store(create_engine(url), url)


def fake_attempt(root: Path, job_id: int, parent_pid: int | None, fence: int | None, train_s: float) -> int:
    """One attempt at ``job_id`` that sleeps instead of training."""
    workspace = SimpleNamespace(stop_file=root / "STOP")  # all that JobControl asks of it
    store = open_store_fast(root)
    try:
        job = store.get_job(job_id)
        control = JobControl(workspace, store, job_id, parent_pid, fence)
        signal.signal(signal.SIGTERM, control.on_signal)
        store.report_progress(job_id, {"phase": "loading"}, trainer_pid=os.getpid(), fence=fence)
        if store.get_run(job.run_id) is None:
            track = store.require_track(job.track)
            store.create_run(run_id=job.run_id, track=job.track, base_version=track.base_version,
                             config={"fake": True}, dataset_ids=job.dataset_ids)
        attempt = store.start_attempt(job.run_id, job_id=job_id, fence=fence)
        log.info("job %d: fake attempt %d on run %s (fence %s) for %gs", job_id, attempt, job.run_id, fence, train_s)
        report = ProgressReporter(store, job_id, fence)
        steps = max(1, round(train_s / STEP_S))
        status, step = RunStatus.SUCCEEDED, steps
        for n in range(steps):
            action = control(n)
            if action is not None:
                status = {"pause": RunStatus.PAUSED, "stop": RunStatus.STOPPED, "cancel": RunStatus.CANCELLED}[action]
                step = n
                break
            time.sleep(STEP_S if train_s > 0 else 0)
            report({"step": n + 1, "total_steps": steps, "loss": 1.0, "tokens_per_s": 0.0, "attempt": attempt})
        store.finish_run(job.run_id, status=status, final_metrics={"step": step, "total_steps": steps},
                         attempt=attempt)
        ended = control.attempt_status(status)
        record_outcome(root, store, AttemptOutcome(job_id=job_id, fence=fence, status=ended, run_id=job.run_id,
                                                   reason=f"fake attempt {attempt} {ended}", step=step,
                                                   total_steps=steps))
        log.info("job %d: fake attempt %d %s", job_id, attempt, ended)
        return 0
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    from honed.store import StaleAttemptError

    parser = argparse.ArgumentParser(prog="python -m tests.daemon.fake_trainer")
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--parent", type=int, default=None)
    parser.add_argument("--job", type=int, required=True)
    parser.add_argument("--fence", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s fake-trainer[%(process)d] %(levelname)s %(name)s: %(message)s")
    try:
        return fake_attempt(args.workspace, args.job, args.parent, args.fence,
                            float(os.environ.get("HONED_FAKE_TRAIN_S", "0")))
    except (ClaimLost, StaleAttemptError) as exc:
        log.error("job %d: the store refused this trainer's writes, stopping without writing more: %s", args.job, exc)
        return EXIT_CLAIM_LOST


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
