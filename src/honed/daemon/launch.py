"""Start a trainer in several processes: torchrun, with the trainer's exit codes.

``python -m honed.daemon.launch --nproc N -- TRAINER ARGS`` is
``torchrun --standalone --nnodes 1 --nproc-per-node N --max-restarts 0 -m
honed.daemon.trainer_process TRAINER ARGS``, through torchrun's own argument parser and
launcher (``torch.distributed.run``), with one difference the daemon needs: when a rank
fails, torchrun exits 1 whatever happened, while this exits with the code of the failure
that came first, so that "the job cannot be trained" (3) and "the claim was lost" (4)
from rank 0 reach the daemon as they do from a single trainer. Rank 0 records the
attempt's outcome as a single trainer does; when another rank failed first, rank 0's
record only tells the consequence (a broken connection), so this records the cause
in its place: which rank failed and how.

``--max-restarts 0``: a rank that dies ends the attempt (torchrun stops the others); the
daemon counts it and starts the next attempt from the last checkpoint, with its bounded
attempts and backoff, as for any crashed trainer.

Several machines (``train.nnodes > 1``): every machine runs this with ``--nnodes N
--node-rank K --rdzv-endpoint HOST:PORT``; the daemon's machine is node 0 and the others
are started by ``honed node`` (:mod:`honed.daemon.node`). The rendezvous is torchrun's
``static`` one, whose TCPStore (c10d's) node 0 hosts at the endpoint: its node ranks are
the ones given, so global rank 0, the process that holds the daemon's claim on the job,
answers its signals and records the outcome, is always on the daemon's machine. (torchrun's
``c10d`` rendezvous orders the nodes by host name and process id instead: rank 0 could
land on a machine without the daemon.)
"""

from __future__ import annotations

import argparse
import signal
import sys
import uuid

TRAINER_MODULE = "honed.daemon.trainer_process"


def launch_command(nproc: int, *trainer_args: str, module: str = TRAINER_MODULE, nnodes: int = 1,
                   node_rank: int = 0, rdzv_endpoint: str = "", rdzv_id: str = "none",
                   rdzv_timeout_s: int = 600) -> list[str]:
    """The command that runs this machine's share of a job with ``train.nproc = nproc`` on
    ``train.nnodes = nnodes`` machines (this one being node ``node_rank``) in the
    rendezvous ``rdzv_id``: one per attempt, so that a machine late for an attempt that
    has ended waits out its timeout instead of joining the next one."""
    several = ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--rdzv-endpoint", rdzv_endpoint,
               "--rdzv-id", rdzv_id, "--rdzv-timeout", str(rdzv_timeout_s)] if nnodes > 1 else []
    return [sys.executable, "-m", "honed.daemon.launch", "--nproc", str(nproc), *several, "--module", module,
            "--", *trainer_args]


def rendezvous_id(job_id: int, fence: int | None) -> str:
    """The rendezvous of one attempt at a job that spans machines (its claim's fence)."""
    return f"honed-job-{job_id}-fence-{fence}"


def describe_failure(rank: int, exitcode: int, pid: int) -> str:
    if exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited with code {exitcode}"
    return f"rank {rank} (pid {pid}) {how}"


def cause_of(failures: dict) -> tuple | None:
    """The rank killed by a signal, if one was: the others' errors (a connection reset by
    their peer) follow from it, whichever torchrun saw first."""
    killed = sorted((rank, f) for rank, f in failures.items() if f.exitcode < 0)
    return killed[0] if killed else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m honed.daemon.launch")
    parser.add_argument("--nproc", type=int, required=True, help="processes on this machine")
    parser.add_argument("--nnodes", type=int, default=1, help="machines of the job")
    parser.add_argument("--node-rank", type=int, default=0, help="this machine's place among them (0: the daemon's)")
    parser.add_argument("--rdzv-endpoint", default="", help="HOST:PORT of node 0, with --nnodes above 1")
    parser.add_argument("--rdzv-id", default="none", help="the attempt's rendezvous, the same on every machine")
    parser.add_argument("--rdzv-timeout", type=int, default=600, help="seconds to wait for every machine")
    parser.add_argument("--module", default=TRAINER_MODULE, help=argparse.SUPPRESS)
    parser.add_argument("trainer_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    trainer_args = args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else args.trainer_args

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    if args.nnodes > 1:
        from honed.config.models import split_endpoint

        host, port = split_endpoint(args.rdzv_endpoint, "--rdzv-endpoint")
        where = ["--nnodes", str(args.nnodes), "--node-rank", str(args.node_rank), "--rdzv-backend", "static",
                 "--master-addr", host, "--master-port", str(port), "--rdzv-id", args.rdzv_id,
                 "--rdzv-conf", f"timeout={args.rdzv_timeout}"]
    else:
        where = ["--nnodes", "1"]
    run_args = parse_args([*where, "--nproc-per-node", str(args.nproc), "--max-restarts", "0",
                           "--monitor-interval", "0.5", "-m", args.module, *trainer_args])
    if args.nnodes == 1:
        # What torchrun's --standalone does: a rendezvous of this machine alone, on a free port.
        run_args.rdzv_backend, run_args.rdzv_endpoint, run_args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    config, entrypoint, entry_args = config_from_args(run_args)
    try:
        elastic_launch(config=config, entrypoint=entrypoint)(*entry_args)
    except ChildFailedError as exc:
        rank, failure = cause_of(exc.failures) or exc.get_first_failure()
        others = sorted(r for r in exc.failures if r != rank)
        after = f"; then rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} ended" if others else ""
        reason = f"TrainerRankError: {describe_failure(rank, failure.exitcode, failure.pid)}{after}"
        print(reason, file=sys.stderr, flush=True)
        if rank != 0:
            record_rank_failure(trainer_args, reason)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def record_rank_failure(trainer_args: list[str], reason: str) -> None:
    """Record a crashed attempt whose cause is a rank other than 0, for the job and
    claim named in the trainer's arguments (``--workspace WS --job N --fence F``)."""
    from pathlib import Path

    from honed.daemon.outcome import AttemptOutcome, record_outcome
    from honed.states import AttemptStatus
    from honed.store import StaleAttemptError, StoreError
    from honed.workspace import WorkspaceError, open_workspace

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--job", type=int)
    parser.add_argument("--fence", type=int)
    known, _ = parser.parse_known_args(trainer_args)
    if known.workspace is None or known.job is None:
        return
    outcome = AttemptOutcome(job_id=known.job, fence=known.fence, status=AttemptStatus.CRASHED, reason=reason)
    try:
        with open_workspace(known.workspace).open_store() as store:
            record_outcome(known.workspace, store, outcome)
    except (StoreError, WorkspaceError, StaleAttemptError) as exc:  # the file is written first in any case
        print(f"the rank failure was not recorded in the store: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
