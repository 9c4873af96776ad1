"""The trainer's side of fencing, without training: once its job was taken over, every
write it tries ends it (ClaimLost), and the training code's crash handler cannot record
anything under the new owner's attempt."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from honed.daemon.fencing import ClaimLost, FencedRunStore, JobControl, ProgressReporter
from honed.daemon.trainer_process import parse_job_line
from honed.store import Store


@pytest.fixture
def taken_over(tmp_path):
    """A job claimed by w1 (fence 1) whose trainer started attempt 1 of its run, then
    taken over by w2 (fence 2) after w1's lease ran out."""
    store = Store.open(tmp_path / "honed.db")
    store.ensure_track("main", store.add_base("tiny"))
    dataset = store.add_dataset(name="d", track="main", file_hash="h", source_path="/d", stored_path="/d",
                                mode="lenient", n_records=1, n_rejected=0, reject_path=None, records=[(1, "r1")])
    job = store.create_job(track="main", dataset_ids=[dataset.id])
    old = store.claim_next_job("w1", "run-a", lease_s=1)
    store.create_run(run_id="run-a", track="main", base_version=0, config={}, dataset_ids=[dataset.id])
    trainer_store = FencedRunStore(store, job.id, old.fence)
    assert trainer_store.start_attempt("run-a") == 1
    store.claim_next_job("w2", "run-b", now=old.lease_until + timedelta(seconds=1))
    yield store, trainer_store, SimpleNamespace(job=job, fence=old.fence, stop_file=tmp_path / "STOP")
    store.close()


def test_every_stale_write_of_the_training_code_raises_claim_lost(taken_over) -> None:
    store, trainer_store, old = taken_over
    with pytest.raises(ClaimLost):
        trainer_store.record_checkpoint("run-a", 5, "/ckpt", attempt=1)
    with pytest.raises(ClaimLost):
        trainer_store.finish_run("run-a", status="succeeded", attempt=1)
    with pytest.raises(ClaimLost, match="no longer holds it"):
        trainer_store.start_attempt("run-a")
    assert trainer_store.get_run("run-a").status == "running"  # reads go through untouched
    assert store.list_checkpoints("run-a") == []


def test_claim_lost_passes_a_crash_handler_that_would_write_under_the_current_attempt(taken_over) -> None:
    store, trainer_store, _ = taken_over

    def attempt_with_crash_handler(store) -> None:  # the shape of honed.training.recipe.run_attempt_of
        try:
            store.record_checkpoint("run-a", 5, "/ckpt", attempt=1)
        except Exception:
            store.finish_run("run-a", status="failed", error="crashed", attempt=store.get_run("run-a").attempt)
            raise

    with pytest.raises(ClaimLost):
        attempt_with_crash_handler(trainer_store)
    run = store.get_run("run-a")
    assert run.status == "running" and run.error is None


def test_control_and_progress_of_a_lost_claim_raise_claim_lost(taken_over) -> None:
    store, _, old = taken_over
    control = JobControl(SimpleNamespace(stop_file=old.stop_file), store, old.job.id, parent_pid=None,
                         fence=old.fence)
    with pytest.raises(ClaimLost):
        control(3)
    report = ProgressReporter(store, old.job.id, old.fence)
    with pytest.raises(ClaimLost):
        report({"step": 3, "total_steps": 10, "loss": 1.0, "tokens_per_s": 1.0, "attempt": 1})
    assert store.get_job(old.job.id).progress is None


def test_the_warm_trainer_reads_its_job_line_with_or_without_a_fence() -> None:
    assert parse_job_line("job 7 fence=3 /ws/logs/jobs/job 7.log\n") == (7, 3, "/ws/logs/jobs/job 7.log")
    assert parse_job_line("job 7 /ws/logs/jobs/job-7.log\n") == (7, None, "/ws/logs/jobs/job-7.log")
    assert parse_job_line("job 7\n") == (7, None, None)
