"""Claims as leases with fencing tokens, on SQLite and PostgreSQL: a claim sets the fence
and the lease, renewal extends it, a lapsed lease is taken over with the next fence, and
every write of the old claim is then refused and changes nothing."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from honed.store import StaleAttemptError, StaleClaimError, Store
from tests.store.test_store_catalog import add_dataset


@pytest.fixture
def dataset_id(store: Store, main_track: str) -> int:
    return add_dataset(store, main_track, "h1").id


def test_a_claim_sets_the_fence_and_the_lease_and_renewal_extends_it(store: Store, dataset_id: int) -> None:
    job = store.create_job(track="main", dataset_ids=[dataset_id])
    assert job.fence == 0 and job.lease_until is None
    claimed = store.claim_next_job("w1", "run-a", lease_s=30)
    assert claimed.fence == 1 and claimed.worker == "w1"
    assert timedelta(seconds=25) < claimed.lease_until - claimed.updated_at < timedelta(seconds=35)
    renewed_until = store.renew_lease(job.id, 1, lease_s=120)
    assert renewed_until > claimed.lease_until + timedelta(seconds=60)
    assert store.get_job(job.id).lease_until == renewed_until
    # Settled: the lease ends with the attempt, the fence stays; the next claim takes the next one.
    settled = store.end_attempt(job.id, "queued", "interrupted", fence=1)
    assert settled.lease_until is None and settled.worker is None and settled.fence == 1
    assert store.claim_next_job("w2", "run-b").fence == 2


def test_a_live_lease_is_not_taken_over(store: Store, dataset_id: int) -> None:
    store.create_job(track="main", dataset_ids=[dataset_id])
    store.claim_next_job("w1", "run-a", lease_s=60)
    assert store.claim_next_job("w2", "run-b", lease_s=60) is None


def test_a_lapsed_lease_is_taken_over_and_the_old_claim_is_fenced_out(store: Store, dataset_id: int) -> None:
    job = store.create_job(track="main", dataset_ids=[dataset_id])
    old = store.claim_next_job("w1", "run-a", lease_s=1)
    store.create_run(run_id="run-a", track="main", base_version=0, config={}, dataset_ids=[dataset_id])
    old_attempt = store.start_attempt("run-a", job_id=job.id, fence=old.fence)
    store.report_progress(job.id, {"step": 3}, trainer_pid=111, fence=old.fence)
    store.request_command(job.id, "pause")
    assert store.take_command(job.id, 3, fence=old.fence) == "pause"

    new = store.claim_next_job("w2", "run-b", lease_s=60, now=old.lease_until + timedelta(seconds=1))
    assert new.id == job.id and new.worker == "w2" and new.fence == old.fence + 1
    assert new.state == "running" and new.run_id == "run-a" and new.failures == 0  # not a failed attempt
    taken_over = store.job_events(job.id)[-1]
    assert taken_over.kind == "taken_over"
    assert taken_over.data["previous_worker"] == "w1" and taken_over.data["fence"] == new.fence
    assert "w1" in taken_over.message and "lease ran out" in taken_over.message
    before = store.get_job(job.id)
    events_before = len(store.job_events(job.id))

    stale = [
        lambda: store.renew_lease(job.id, old.fence, 60),
        lambda: store.report_progress(job.id, {"step": 4}, trainer_pid=111, fence=old.fence),
        lambda: store.take_command(job.id, 4, fence=old.fence),
        lambda: store.mark_job_evaluating(job.id, "scoring", fence=old.fence),
        lambda: store.add_job_event(job.id, "checkpoint", "step 5", fence=old.fence),
        lambda: store.end_attempt(job.id, "succeeded", "done", fence=old.fence),
        lambda: store.add_adapter(track="main", run_id="run-a", job_id=job.id, base_version=0, path="/a",
                                  fence=old.fence),
        lambda: store.start_attempt("run-a", job_id=job.id, fence=old.fence),
    ]
    for write in stale:
        with pytest.raises(StaleClaimError, match=f"fence {old.fence} no longer holds it.*w2 holds it"):
            write()
    # The run moved on to a new attempt at the takeover: the old trainer's run writes fail too.
    with pytest.raises(StaleAttemptError):
        store.record_checkpoint("run-a", 5, "/ckpt", attempt=old_attempt)
    with pytest.raises(StaleAttemptError):
        store.finish_run("run-a", status="succeeded", attempt=old_attempt)
    after = store.get_job(job.id)
    assert after == before, "a refused write changed the job"
    assert len(store.job_events(job.id)) == events_before
    assert store.list_adapters("main") == [] and store.list_checkpoints("run-a") == []
    assert store.get_run("run-a").status == "running"
    # The pause the lost trainer took waits for the new one; the new claim writes freely.
    assert store.take_command(job.id, 0, fence=new.fence) == "pause"
    assert store.start_attempt("run-a", job_id=job.id, fence=new.fence) > old_attempt + 1
    store.report_progress(job.id, {"step": 1}, fence=new.fence)
    store.end_attempt(job.id, "paused", "paused at step 1", fence=new.fence)
    assert store.get_job(job.id).state == "paused"


def test_writes_of_a_settled_claim_are_refused(store: Store, dataset_id: int) -> None:
    job = store.create_job(track="main", dataset_ids=[dataset_id])
    claim = store.claim_next_job("w1", "run-a")
    store.end_attempt(job.id, "queued", "recovered", fence=claim.fence)
    with pytest.raises(StaleClaimError, match="settled; it is queued"):
        store.report_progress(job.id, {"step": 1}, fence=claim.fence)
    with pytest.raises(StaleClaimError):
        store.renew_lease(job.id, claim.fence, 60)
    # People's commands carry no fence.
    assert store.request_command(job.id, "cancel").state == "done"


def test_unfenced_writers_keep_working(store: Store, dataset_id: int) -> None:
    job = store.create_job(track="main", dataset_ids=[dataset_id])
    store.claim_next_job("w1", "run-a")
    store.report_progress(job.id, {"step": 1}, trainer_pid=5)
    store.add_job_event(job.id, "note", "unfenced")
    assert store.take_command(job.id, 1) is None
    store.end_attempt(job.id, "succeeded", "done")
    assert store.get_job(job.id).state == "succeeded"


def test_a_job_taken_over_while_evaluating_is_evaluated_again(store: Store, dataset_id: int) -> None:
    job = store.create_job(track="main", dataset_ids=[dataset_id])
    old = store.claim_next_job("w1", "run-a", lease_s=1)
    store.mark_job_evaluating(job.id, "scoring", fence=old.fence)
    new = store.claim_next_job("w2", "run-b", now=old.lease_until + timedelta(seconds=1))
    assert new.id == job.id and new.state == "running"
    store.mark_job_evaluating(job.id, "scoring again", fence=new.fence)


def test_two_daemons_proposing_the_same_run_id_get_a_run_each(store: Store, dataset_id: int) -> None:
    first = store.create_job(track="main", dataset_ids=[dataset_id])
    second = store.create_job(track="main", dataset_ids=[dataset_id])
    third = store.create_job(track="main", dataset_ids=[dataset_id])
    a = store.claim_next_job("w1", "run-20261126-101500-beef")
    store.create_run(run_id=a.run_id, track="main", base_version=0, config={}, dataset_ids=[dataset_id])
    b = store.claim_next_job("w2", "run-20261126-101500-beef")  # the same second, the same four hex digits
    store.end_attempt(a.id, "succeeded", "done")
    c = store.claim_next_job("w3", "run-20261126-101500-beef")
    assert [a.id, b.id, c.id] == [first.id, second.id, third.id]
    assert a.run_id == "run-20261126-101500-beef"
    assert len({a.run_id, b.run_id, c.run_id}) == 3 and b.run_id.startswith(a.run_id)


def test_concurrent_claims_take_each_job_once(store: Store, dataset_id: int) -> None:
    """Eight threads claim forty jobs at once: every job is claimed exactly once."""
    ids = {store.create_job(track="main", dataset_ids=[dataset_id]).id for _ in range(40)}
    claimed: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            while (job := store.claim_next_job(name, f"run-{name}", lease_s=60)) is not None:
                claimed.append((name, job.id))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(j for _, j in claimed) == sorted(ids)
    assert all(store.get_job(j).fence == 1 for j in ids)
