"""The queue's state machine in the store, on SQLite and PostgreSQL: claim order,
control commands on waiting and running jobs, how an attempt's end settles commands."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from honed.store import JobStateError, Store, StoreError
from tests.store.test_store_catalog import add_dataset


@pytest.fixture
def dataset_id(store: Store, main_track: str) -> int:
    return add_dataset(store, main_track, "h1").id


def test_jobs_are_claimed_by_priority_then_first_in_first_out(store: Store, dataset_id: int) -> None:
    low = store.create_job(track="main", dataset_ids=[dataset_id], priority="low")
    first = store.create_job(track="main", dataset_ids=[dataset_id])
    high = store.create_job(track="main", dataset_ids=[dataset_id], priority="high")
    second = store.create_job(track="main", dataset_ids=[dataset_id])
    order = [store.claim_next_job("w", f"run-{i}") for i in range(4)]
    assert [j.id for j in order] == [high.id, first.id, second.id, low.id]
    assert all(j.state == "running" and j.worker == "w" for j in order)
    assert order[0].run_id == "run-0"
    assert store.claim_next_job("w", "run-x") is None
    kinds = [e.kind for e in store.job_events(high.id)]
    assert kinds == ["queued", "started"]


def test_a_job_in_backoff_waits_and_keeps_its_run(store: Store, dataset_id: int) -> None:
    job = store.create_job(track="main", dataset_ids=[dataset_id])
    claimed = store.claim_next_job("w", "run-a")
    later = datetime.now(UTC) + timedelta(hours=1)
    store.end_attempt(job.id, "queued", "attempt 1 failed", failed=True, not_before=later, error="boom")
    assert store.claim_next_job("w", "run-b") is None  # still backing off
    store.end_attempt(job.id, "queued", "retry now", not_before=None)
    again = store.claim_next_job("w", "run-b")
    assert again.id == job.id and again.run_id == claimed.run_id == "run-a"
    assert again.failures == 1


def test_unknown_track_dataset_or_priority_is_refused_by_name(store: Store, dataset_id: int) -> None:
    with pytest.raises(StoreError, match="nope"):
        store.create_job(track="nope", dataset_ids=[dataset_id])
    with pytest.raises(StoreError, match="unknown dataset id 999"):
        store.create_job(track="main", dataset_ids=[999])
    with pytest.raises(StoreError, match="high, normal, low"):
        store.create_job(track="main", dataset_ids=[dataset_id], priority="urgent")


def test_commands_on_a_waiting_job_apply_at_once(store: Store, dataset_id: int) -> None:
    job = store.create_job(track="main", dataset_ids=[dataset_id])
    done = store.request_command(job.id, "pause")
    assert done.state == "done" and store.get_job(job.id).state == "paused"
    with pytest.raises(JobStateError, match="paused"):
        store.request_command(job.id, "pause")
    store.request_command(job.id, "resume")
    assert store.get_job(job.id).state == "queued"
    store.request_command(job.id, "skip")
    assert store.get_job(job.id).state == "skipped"
    with pytest.raises(JobStateError, match="nothing to stop"):
        store.request_command(job.id, "stop")
    store.request_command(job.id, "cancel")
    cancelled = store.get_job(job.id)
    assert cancelled.state == "cancelled" and cancelled.ended_at is not None
    with pytest.raises(JobStateError, match="cancelled; it cannot be resumed"):
        store.request_command(job.id, "resume")
    assert store.claim_next_job("w", "run") is None


def test_resume_of_a_finished_job_says_why_not(store: Store, dataset_id: int) -> None:
    job = store.create_job(track="main", dataset_ids=[dataset_id])
    store.claim_next_job("w", "run")
    store.end_attempt(job.id, "failed", "gave up", error="RuntimeError: out of ideas\ntraceback…")
    with pytest.raises(JobStateError, match="already failed: RuntimeError: out of ideas; it cannot be resumed"):
        store.request_command(job.id, "resume")


def test_a_running_job_gets_a_pending_command_its_trainer_takes(store: Store, dataset_id: int) -> None:
    job = store.create_job(track="main", dataset_ids=[dataset_id])
    store.claim_next_job("w", "run")
    assert store.take_command(job.id, 3) is None
    command = store.request_command(job.id, "pause")
    assert command.state == "pending" and store.get_job(job.id).state == "running"
    with pytest.raises(JobStateError, match="already has a 'pause' command"):
        store.request_command(job.id, "cancel")
    assert store.take_command(job.id, 7) == "pause"
    assert store.take_command(job.id, 8) is None
    taken = store.get_command(command.id)
    assert taken.state == "taken" and taken.taken_step == 7
    assert store.taken_command(job.id) == "pause"
    store.end_attempt(job.id, "paused", "paused at step 7")
    finished = store.get_command(command.id)
    assert finished.state == "done" and "paused" in finished.outcome
    assert store.taken_command(job.id) is None


def test_a_pending_command_meets_a_crashed_attempt(store: Store, dataset_id: int) -> None:
    """The trainer died before taking the command: pause applies to the waiting job;
    stop stays pending for the next trainer; a finished job tells the command so."""
    paused = store.create_job(track="main", dataset_ids=[dataset_id])
    store.claim_next_job("w", "run-1")
    pause = store.request_command(paused.id, "pause")
    settled = store.end_attempt(paused.id, "queued", "attempt failed", failed=True)
    assert settled.state == "paused" and store.get_command(pause.id).state == "done"

    stopped = store.create_job(track="main", dataset_ids=[dataset_id])
    store.claim_next_job("w", "run-2")
    stop = store.request_command(stopped.id, "stop")
    assert store.end_attempt(stopped.id, "queued", "interrupted").state == "queued"
    assert store.get_command(stop.id).state == "pending"
    store.request_command(stopped.id, "cancel")  # out of the way; the stop is superseded
    assert store.get_command(stop.id).outcome == "superseded by cancel"

    finished = store.create_job(track="main", dataset_ids=[dataset_id])
    store.claim_next_job("w", "run-3")
    late = store.request_command(finished.id, "skip")
    store.end_attempt(finished.id, "succeeded", "done")
    assert "already become succeeded" in store.get_command(late.id).outcome


def test_priority_moves_only_while_waiting(store: Store, dataset_id: int) -> None:
    job = store.create_job(track="main", dataset_ids=[dataset_id], priority="low")
    assert store.set_job_priority(job.id, "high").priority == "high"
    store.claim_next_job("w", "run")
    with pytest.raises(JobStateError, match="running"):
        store.set_job_priority(job.id, "low")


def test_concurrent_claimers_never_take_the_same_job(store: Store, dataset_id: int) -> None:
    jobs = [store.create_job(track="main", dataset_ids=[dataset_id]).id for _ in range(12)]
    claimed: list[int] = []
    lock = threading.Lock()

    def claim(worker: str) -> None:
        while (job := store.claim_next_job(worker, f"run-{worker}")) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == jobs


def test_workers_record_heartbeats_and_their_stop(store: Store) -> None:
    store.register_worker("host:1:a", "host", 1, "/ws")
    store.beat_worker("host:1:a", {"activity": "idle"})
    store.beat_worker("host:1:a", {"activity": "stopped"}, stopped=True)
    (worker,) = store.list_workers("/ws")
    assert worker.state == {"activity": "stopped"} and worker.stopped_at is not None
    assert store.list_workers("/elsewhere") == []
