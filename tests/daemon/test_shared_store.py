"""Several daemons sharing one PostgreSQL store and one artifact directory, as on
several machines: every job is done exactly once, and a daemon frozen past its lease
loses its job to another, whose work its writes can no longer touch.

Real ``honed daemon`` processes, each with a workspace of its own, on the same store URL
and ``store.artifacts``; the trainer is :mod:`tests.daemon.fake_trainer` (claims are what
is tested here, not training).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from honed.daemon.control import queue_job
from honed.store import Store
from honed.workspace import Workspace, init_workspace
from tests.daemon.conftest import configure, pid_alive, synth, wait_for

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_trainer(monkeypatch, tmp_path):
    """Daemons started from here run the fake trainer (the environment is inherited);
    calling it sets how long each one trains."""
    monkeypatch.setenv("HONED_TRAINER_MODULE", "tests.daemon.fake_trainer")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))

    def train_for(seconds: float) -> None:
        monkeypatch.setenv("HONED_FAKE_TRAIN_S", str(seconds))

    train_for(0)
    yield train_for
    for proc in psutil.process_iter(["cmdline"]):  # a stopped or orphaned fake trainer must not outlive the test
        cmd = proc.info.get("cmdline") or []
        if "tests.daemon.fake_trainer" in cmd and any(str(tmp_path) in part for part in cmd):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def shared_workspaces(tmp_path: Path, base: Path, url: str, n: int, daemon: dict) -> list[Workspace]:
    """``n`` workspaces on one store and one artifact directory, as on ``n`` machines."""
    shared = tmp_path / "shared-artifacts"
    workspaces = []
    for i in range(n):
        ws = init_workspace(tmp_path / f"machine-{i}", base=str(base), store_url=url, artifacts=str(shared))
        workspaces.append(configure(ws, {"daemon": {"warm_trainer": False, **daemon}}))
    assert all(ws.runs_dir == shared / "runs" and ws.inbox.parent == ws.root for ws in workspaces)
    return workspaces


def events_by_job(store: Store) -> dict[int, list]:
    """Every job's events, oldest first."""
    out: dict[int, list] = {}
    after = 0
    while batch := store.events_after(after, limit=1000):
        for event in batch:
            out.setdefault(event.job_id, []).append(event)
        after = batch[-1].id
    return out


@pytest.mark.slow
@pytest.mark.long  # 600 trainer processes: beyond CI's budget (the frozen-daemon test below runs by default)
def test_three_daemons_run_200_jobs_each_exactly_once(tmp_path, tiny_random_base, pg_schema_url, start_daemon,
                                                      fake_trainer):
    workspaces = shared_workspaces(tmp_path, tiny_random_base, pg_schema_url, 3,
                                   {"poll_interval_s": 0.1, "lease_s": 30.0})
    daemons = [start_daemon(ws, wait=False) for ws in workspaces]
    wait_for(lambda: all(d.proc.poll() is None and _holds_lock(d) for d in daemons), 90, "three daemons to start")
    ws = workspaces[0]
    with ws.open_store() as store:
        first, added = queue_job(ws, store, [str(synth(tmp_path / "data.jsonl", 20))], track="main")
        assert Path(added[0].dataset.stored_path).is_relative_to(tmp_path / "shared-artifacts" / "datasets")
        ids = [first.id] + [queue_job(ws, store, [str(first.dataset_ids[0])], track="main")[0].id
                            for _ in range(199)]
        started = time.monotonic()
        wait_for(lambda: store.job_counts().get("succeeded", {}).get("jobs") == 200
                 or any(d.proc.poll() is not None for d in daemons), 240, "200 jobs to succeed", interval=0.5)
        took = time.monotonic() - started
        assert all(d.proc.poll() is None for d in daemons), [d.output()[-3000:] for d in daemons]
        counts = store.job_counts()
        assert counts == {"succeeded": {"jobs": 200, "failed_attempts": 0}}, counts
        events = events_by_job(store)
        workers = {w.id: w.workspace for w in store.list_workers(limit=10)}
        claims_by_worker: Counter[str] = Counter()
        for job_id in ids:
            kinds = Counter(e.kind for e in events[job_id])
            assert kinds["started"] == 1 and kinds["taken_over"] == 0, (job_id, kinds)  # zero double claims
            assert kinds["succeeded"] == 1 and kinds["trainer"] == 1, (job_id, kinds)
            job = store.get_job(job_id)
            assert job.fence == 1 and job.lease_until is None and job.worker is None
            assert store.get_run(job.run_id).attempt == 1  # one trainer started one attempt
            started_by = next(e for e in events[job_id] if e.kind == "started").data["worker"]
            claims_by_worker[workers[started_by]] += 1
        assert set(claims_by_worker) == {str(w.root) for w in workspaces}, claims_by_worker  # each did some
    print(f"200 jobs on 3 daemons in {took:.1f}s; claims per workspace: {sorted(claims_by_worker.values())}")


def test_a_daemon_frozen_past_its_lease_loses_its_job_and_its_writes_are_refused(
        tmp_path, tiny_random_base, pg_schema_url, start_daemon, fake_trainer):
    fake_trainer(6.0)
    frozen_ws, other_ws = shared_workspaces(tmp_path, tiny_random_base, pg_schema_url, 2,
                                            {"poll_interval_s": 0.1, "lease_s": 3.0})
    frozen = start_daemon(frozen_ws)
    store = frozen_ws.open_store()
    stopped: list[int] = []
    try:
        job, _ = queue_job(frozen_ws, store, [str(synth(tmp_path / "data.jsonl", 20))], track="main")
        held = wait_for(lambda: (j := store.get_job(job.id)).progress and j.progress.get("phase") == "training"
                        and j, 60, "the first daemon's trainer to train")
        trainer_pid = held.trainer_pid
        for pid in (trainer_pid, frozen.pid):  # freeze the machine: its trainer and its daemon
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        other = start_daemon(other_ws)

        done = wait_for(lambda: (j := store.get_job(job.id)).state in ("succeeded", "failed") and j, 90,
                        "the second daemon to take the job over and finish it")
        assert done.state == "succeeded" and done.fence == held.fence + 1
        events = store.job_events(job.id)
        kinds = [e.kind for e in events]
        takeover = events[kinds.index("taken_over")]
        assert takeover.data["previous_worker"] == held.worker and takeover.data["worker"] != held.worker
        assert kinds.count("started") == 1 and kinds.count("taken_over") == 1 and kinds.count("succeeded") == 1

        for pid in stopped:  # the machine wakes up
            os.kill(pid, signal.SIGCONT)
        stopped.clear()
        wait_for(lambda: "lost to another worker" in frozen.output(), 30, "the woken daemon to find its job lost")
        wait_for(lambda: not pid_alive(trainer_pid), 30, "the woken trainer to be gone")
        time.sleep(1.0)  # anything the woken pair still tried to write would land now
        after = store.job_events(job.id)
        assert [e.id for e in after] == [e.id for e in events], [e.message for e in after[len(events):]]
        assert store.get_job(job.id) == done
        run = store.get_run(done.run_id)
        assert run.status == "succeeded" and run.attempt == 3  # 1: frozen, 2: fenced out at the takeover, 3: new
        assert f"fence {held.fence} no longer holds it" in frozen.output()  # the store refused the daemon
        trainer_log = (frozen_ws.logs_dir / "jobs" / f"job-{job.id}.log").read_text()
        assert "fake attempt 1 succeeded" not in trainer_log  # killed, or refused: it did not finish the run

        # The woken daemon carries on: it runs the next job.
        assert other.stop() == 0
        fake_trainer(0)
        assert frozen.proc.poll() is None, frozen.output()[-3000:]
        nxt, _ = queue_job(frozen_ws, store, [str(done.dataset_ids[0])], track="main")
        finished = wait_for(lambda: (j := store.get_job(nxt.id)).state in ("succeeded", "failed") and j, 60,
                            "the woken daemon to run the next job")
        assert finished.state == "succeeded"
        assert store.job_events(nxt.id)[1].data["worker"] == held.worker
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        store.close()


def _holds_lock(daemon) -> bool:
    from honed.daemon.lock import daemon_running, read_info

    return daemon_running(daemon.root) and read_info(daemon.root).pid == daemon.proc.pid
