"""Reliability of the daemon with real processes, real signals and the tiny model:
trainers killed at random steps, a daemon killed mid-job, pause and resume, two daemons
on one workspace, a trainer that always crashes."""

from __future__ import annotations

import os
import random
import signal

import pytest

from honed.store import Store
from tests.cli_runner import run_honed
from tests.daemon.conftest import configure, last_logged_step, pid_alive, synth, trainer_processes, wait_for

JOB_TIMEOUT = 240


def finished(store: Store, job_id: int, timeout: float = JOB_TIMEOUT):
    """Wait until the job is in a final state, then return it."""
    return wait_for(lambda: (j := store.get_job(job_id)).state in ("succeeded", "failed", "cancelled") and j,
                    timeout, f"job {job_id} to finish")


def train_curve(store: Store, run_id: str) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in store.get_metrics(run_id)]


def assert_same_losses(curve: list[tuple[int, float]], expected: list[tuple[int, float]], rel: float = 1e-5) -> None:
    """The same steps, and at each the same loss to ``rel``."""
    assert [s for s, _ in curve] == [s for s, _ in expected]
    for (step, loss), (_, want) in zip(curve, expected, strict=True):
        assert loss == pytest.approx(want, rel=rel), f"step {step}"


def reference_run(ws, store, start_daemon, dataset: int):
    """An uninterrupted job on ``dataset``: the curve the interrupted ones must match."""
    job = store.create_job(track="main", dataset_ids=[dataset])
    daemon = start_daemon(ws)
    done = finished(store, job.id)
    daemon.stop()
    assert done.state == "succeeded", store.job_events(job.id)
    return store.get_run(done.run_id)


def add_dataset(ws, store, n: int, seed: int) -> int:
    from honed.data.datasets import add_dataset_file

    return add_dataset_file(ws, store, synth(ws.root / f"data-{seed}.jsonl", n, seed), track="main",
                            mode="strict").dataset.id


@pytest.mark.slow
@pytest.mark.long  # five kills of one job, 45 steps: beyond CI's budget (the fault campaign's 20 are one each)
def test_trainer_killed_at_five_random_steps_finishes_with_the_uninterrupted_loss(daemon_ws, start_daemon):
    ws = configure(daemon_ws, {"daemon": {"max_attempts": 8}})
    store = ws.open_store()
    dataset = add_dataset(ws, store, 400, seed=1)  # 45 steps of 8
    reference = reference_run(ws, store, start_daemon, dataset)
    total = reference.final_metrics["total_steps"]
    rng = random.Random(os.getpid())
    kill_at = sorted(rng.sample(range(3, total - 2), 5))

    job = store.create_job(track="main", dataset_ids=[dataset])
    start_daemon(ws)
    run_dir = ws.runs_dir / wait_for(lambda: store.get_job(job.id).run_id, 30, "a run id")
    for target in kill_at:
        def trainer_at_target(target=target):
            current = store.get_job(job.id)
            if current.state == "running" and current.trainer_pid and last_logged_step(run_dir) >= target:
                return current.trainer_pid
            return None

        pid = wait_for(trainer_at_target, 120, f"the trainer to pass step {target}", interval=0.005)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda pid=pid: not pid_alive(pid), 30, f"trainer {pid} to die")
    done = finished(store, job.id)
    assert done.state == "succeeded", [e.message for e in store.job_events(job.id)]
    run = store.get_run(done.run_id)
    assert done.failures == 5 and run.attempt == 6, f"kills at {kill_at}"
    assert run.final_metrics["loss"] == pytest.approx(reference.final_metrics["loss"], rel=1e-5), kill_at
    resumed, uninterrupted = train_curve(store, run.id), train_curve(store, reference.id)
    assert [s for s, _ in resumed] == list(range(1, total + 1))
    for (step, loss), (_, expected) in zip(resumed, uninterrupted):
        assert loss == pytest.approx(expected, rel=1e-5), f"step {step}, kills at {kill_at}"
    failures = [e for e in store.job_events(job.id) if e.kind == "attempt_failed"]
    assert len(failures) == 5 and all("SIGKILL" in e.message for e in failures)
    store.close()


@pytest.mark.slow  # CI runs it in its second call
def test_daemon_killed_mid_job_resumes_it_after_restart_and_loses_nothing(daemon_ws, start_daemon):
    ws, store = daemon_ws, daemon_ws.open_store()
    jobs = [store.create_job(track="main", dataset_ids=[add_dataset(ws, store, 300, seed=s)]) for s in (1, 2, 3)]
    daemon = start_daemon(ws)
    first = jobs[0].id
    run_dir = ws.runs_dir / wait_for(lambda: store.get_job(first).run_id, 30, "a run id")
    wait_for(lambda: last_logged_step(run_dir) >= 12, 120, "job 1 to train 12 steps", interval=0.01)
    trainer = store.get_job(first).trainer_pid
    daemon.kill()
    # Orphaned, the trainer notices at its next step: it checkpoints and exits.
    wait_for(lambda: not pid_alive(trainer), 60, "the orphaned trainer to exit")
    wait_for(lambda: not trainer_processes(ws.root), 30, "the warm spare trainer to exit")
    interrupted_at = max(c.step for c in store.list_checkpoints(store.get_job(first).run_id))
    assert interrupted_at >= 12
    assert store.get_job(first).state == "running"  # as the dead daemon left it

    start_daemon(ws)
    for job in jobs:
        assert finished(store, job.id).state == "succeeded", [e.message for e in store.job_events(job.id)]
    run = store.get_run(store.get_job(first).run_id)
    kinds = [e.kind for e in store.job_events(first)]
    assert "interrupted" in kinds and "recovered" in kinds
    second_attempt = [row for row in store.get_metrics(run.id, latest_attempt_only=False) if row["attempt"] == 2]
    assert second_attempt[0]["step"] == interrupted_at + 1  # continued, did not start over
    assert [s for s, _ in train_curve(store, run.id)] == list(range(1, run.final_metrics["total_steps"] + 1))
    store.close()


@pytest.mark.slow  # CI runs it in its second call
def test_pause_frees_the_trainer_and_resume_continues_the_curve(daemon_ws, start_daemon):
    ws = configure(daemon_ws, {"train": {"epochs": 2.0}})
    store = ws.open_store()
    dataset = add_dataset(ws, store, 300, seed=4)
    reference = reference_run(ws, store, start_daemon, dataset)

    job = store.create_job(track="main", dataset_ids=[dataset])
    start_daemon(ws)
    run_dir = ws.runs_dir / wait_for(lambda: store.get_job(job.id).run_id, 30, "a run id")
    wait_for(lambda: last_logged_step(run_dir) >= 8, 120, "8 steps", interval=0.01)
    trainer = store.get_job(job.id).trainer_pid
    answer = run_honed("pause", str(job.id), "-w", str(ws.root), "--json")
    assert '"reached": true' in answer.stdout, answer.stdout
    paused = store.get_job(job.id)
    assert paused.state == "paused"
    assert not pid_alive(trainer)
    checkpoint = store.latest_checkpoint(paused.run_id)
    assert checkpoint is not None and (ws.root / checkpoint.path).exists()
    assert checkpoint.step == last_logged_step(run_dir)  # paused exactly where it was

    assert "job" in run_honed("resume", str(job.id), "-w", str(ws.root)).stdout
    done = finished(store, job.id)
    assert done.state == "succeeded"
    resumed, uninterrupted = train_curve(store, done.run_id), train_curve(store, reference.id)
    assert len(resumed) == len(uninterrupted)
    for (step, loss), (_, expected) in zip(resumed, uninterrupted):
        assert loss == pytest.approx(expected, rel=1e-5), f"step {step} after a pause at {checkpoint.step}"
    kinds = [e.kind for e in store.job_events(job.id)]
    assert kinds.index("paused") < kinds.index("resumed") < kinds.index("evaluated") < kinds.index("deployed")
    store.close()


def test_two_daemons_on_one_workspace_exactly_one_runs(daemon_ws, start_daemon):
    first = start_daemon(daemon_ws)
    second = start_daemon(daemon_ws, wait=False)
    assert second.proc.wait(timeout=60) != 0
    said = second.output()
    assert "another honed daemon already runs this workspace" in said and f"pid {first.pid}" in said
    detached = run_honed("daemon", "--detach", "-w", str(daemon_ws.root), check=False)
    assert detached.returncode != 0 and f"pid {first.pid}" in detached.stderr
    assert first.proc.poll() is None
    status = run_honed("status", "-w", str(daemon_ws.root), "--json").stdout
    assert f'"pid": {first.pid}' in status and '"up": true' in status
    assert first.stop() == 0
    status = run_honed("status", "-w", str(daemon_ws.root), "--json").stdout
    assert '"up": false' in status and '"last_exit": "stopped"' in status


@pytest.mark.slow  # CI runs it in its second call
def test_a_trainer_that_always_crashes_fails_its_job_after_n_attempts_and_the_next_runs(daemon_ws, start_daemon):
    ws = configure(daemon_ws, {"daemon": {"max_attempts": 2}})
    store = ws.open_store()
    broken = store.create_job(track="main", dataset_ids=[add_dataset(ws, store, 100, seed=5)],
                              overrides={"lora": {"target_modules": ["no_such_module"]}})
    healthy = store.create_job(track="main", dataset_ids=[add_dataset(ws, store, 100, seed=6)])
    start_daemon(ws)
    failed = finished(store, broken.id)
    assert failed.state == "failed" and failed.failures == 2
    assert "no_such_module" in failed.error
    kinds = [e.kind for e in store.job_events(broken.id)]
    assert kinds.count("attempt_failed") == 1 and kinds[-1] == "failed"
    assert "giving up after 2 attempts" in store.job_events(broken.id)[-1].message
    assert finished(store, healthy.id).state == "succeeded"
    store.close()


@pytest.mark.slow  # CI runs it in its second call
def test_a_hung_trainer_is_killed_after_its_heartbeat_stops_and_the_job_retries(daemon_ws, start_daemon):
    ws = configure(daemon_ws, {"daemon": {"heartbeat_timeout_s": 15.0}, "train": {"epochs": 2.0}})
    store = ws.open_store()
    job = store.create_job(track="main", dataset_ids=[add_dataset(ws, store, 300, seed=7)])
    start_daemon(ws)
    run_dir = ws.runs_dir / wait_for(lambda: store.get_job(job.id).run_id, 30, "a run id")
    wait_for(lambda: last_logged_step(run_dir) >= 5, 120, "5 steps", interval=0.01)
    hung = store.get_job(job.id).trainer_pid
    os.kill(hung, signal.SIGSTOP)  # alive, but silent: a deadlock, a stuck device
    wait_for(lambda: not pid_alive(hung), 60, "the daemon to kill the silent trainer")
    done = finished(store, job.id)
    assert done.state == "succeeded" and done.failures == 1
    (failure,) = [e for e in store.job_events(job.id) if e.kind == "attempt_failed"]
    assert "no heartbeat for" in failure.message and "heartbeat_timeout_s" in failure.message
    store.close()


@pytest.mark.slow  # CI runs it in its second call
def test_daemon_detach_stop_and_restart_finish_the_job(daemon_ws):
    ws, store = daemon_ws, daemon_ws.open_store()
    job = store.create_job(track="main", dataset_ids=[add_dataset(ws, store, 400, seed=8)])
    started = run_honed("daemon", "--detach", "-w", str(ws.root))
    assert "daemon started (pid" in started.stdout
    try:
        run_dir = ws.runs_dir / wait_for(lambda: store.get_job(job.id).run_id, 60, "a run id")
        wait_for(lambda: last_logged_step(run_dir) >= 5, 120, "5 steps", interval=0.01)
        stopped = run_honed("daemon", "stop", "-w", str(ws.root))
        assert "stopped" in stopped.stdout
        halted = store.get_job(job.id)
        assert halted.state == "queued" and store.latest_checkpoint(halted.run_id) is not None
        assert any("the daemon is stopping" in e.message for e in store.job_events(job.id))
        assert not trainer_processes(ws.root)
        run_honed("daemon", "--detach", "-w", str(ws.root))
        follow = run_honed("events", str(job.id), "--follow", "-w", str(ws.root), timeout=240)
        assert "is deployed as" in follow.stdout.splitlines()[-1]
    finally:
        run_honed("daemon", "stop", "-w", str(ws.root), check=False)
    assert finished(store, job.id).state == "succeeded"
    assert (ws.logs_dir / "daemon.log").is_file()
    store.close()
