"""Another machine's share of jobs that span machines (``train.nnodes > 1``).

``honed node --node-rank K`` runs on every machine but the daemon's, on the same
workspace (a shared folder; the store on PostgreSQL, so that every machine reaches it).
It watches the store for jobs the daemon started on several machines, and for each
attempt it has not joined yet it starts this machine's ``train.nproc`` trainer processes
under torchrun as node ``K`` (:mod:`honed.daemon.launch`), at the rendezvous the
daemon's ``trainer`` event names, and waits for them to end. Rank 0, on the daemon's
machine, holds the job's claim and records how the attempt ended; a process here that
fails ends the attempt for every machine (torchrun stops the others), and the daemon
retries it from its last checkpoint as it retries any crashed trainer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

from honed.daemon.launch import launch_command, rendezvous_id
from honed.states import JobState

log = logging.getLogger("honed.node")


def attempt_to_join(store, node_rank: int, joined: set[tuple[int, int]]) -> tuple[int, dict] | None:
    """The first running job whose latest attempt spans more than ``node_rank`` machines
    and is not in ``joined`` (``(job id, trainer event id)`` pairs): ``(job id, the
    attempt's trainer event data)``."""
    for job in store.list_jobs(states=(JobState.RUNNING,)):
        started = [e for e in store.job_events(job.id) if e.kind == "trainer"]
        if not started:
            continue
        event = started[-1]
        world = event.data or {}
        if int(world.get("nnodes", 1)) > node_rank and (job.id, event.id) not in joined:
            joined.add((job.id, event.id))
            return job.id, world
    return None


def node_command(root: Path, node_rank: int, job_id: int, world: dict) -> list[str]:
    """This machine's torchrun for the attempt the daemon started with ``world``."""
    trainer_args = ["--workspace", str(root), "--job", str(job_id)]
    if world.get("fence") is not None:
        trainer_args += ["--fence", str(world["fence"])]
    return launch_command(int(world.get("nproc", 1)), *trainer_args, nnodes=int(world["nnodes"]),
                          node_rank=node_rank, rdzv_endpoint=str(world["rdzv_endpoint"]),
                          rdzv_id=rendezvous_id(job_id, world.get("fence")),
                          rdzv_timeout_s=int(world.get("rdzv_timeout_s", 600)))


def run_node(root: Path, node_rank: int, stop: threading.Event | None = None) -> None:
    """Join the daemon's multi-machine attempts as node ``node_rank`` until ``stop`` is
    set (SIGTERM or SIGINT set it when this runs in the main thread)."""
    from honed.workspace import open_workspace

    if node_rank < 1:
        raise ValueError(f"--node-rank {node_rank}: node 0 is the daemon's machine; the others are 1, 2, ...")
    stop = stop or threading.Event()
    current: list[subprocess.Popen] = []

    def on_signal(signum, _frame) -> None:
        log.info("node %d: %s, stopping", node_rank, signal.Signals(signum).name)
        stop.set()
        for process in current:
            _end(process)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    ws = open_workspace(root)
    joined: set[tuple[int, int]] = set()
    log.info("node %d of workspace %s: waiting for jobs that span machines", node_rank, ws.root)
    with ws.open_store() as store:
        while not stop.is_set():
            found = attempt_to_join(store, node_rank, joined)
            if found is None:
                stop.wait(ws.settings.daemon.poll_interval_s)
                continue
            job_id, world = found
            log_path = ws.logs_dir / "nodes" / f"node-{node_rank}-job-{job_id}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log.info("node %d: joining job %d at %s (log: %s)", node_rank, job_id, world.get("rdzv_endpoint"),
                     log_path)
            with open(log_path, "ab") as out:
                process = subprocess.Popen(node_command(ws.root, node_rank, job_id, world), stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=out, start_new_session=True)
            current.append(process)
            code = process.wait()
            current.remove(process)
            log.info("node %d: job %d's processes here ended with code %d", node_rank, job_id, code)


def _end(process: subprocess.Popen) -> None:
    """Stop this machine's processes of an attempt (torchrun and its ranks)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
