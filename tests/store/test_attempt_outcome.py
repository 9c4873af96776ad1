"""An attempt's outcome reaches the daemon: through the store under the claim's fence,
or from its file when the store could not take it; never another claim's."""

from __future__ import annotations

import pytest

from honed.daemon.outcome import AttemptOutcome, outcome_file, read_outcome, record_outcome
from honed.states import AttemptStatus
from honed.store import StaleClaimError


def claimed_job(store, track: str):
    dataset = store.add_dataset(name="d", track=track, file_hash="h", source_path="/d", stored_path="/d",
                                mode="strict", n_records=1, n_rejected=0, reject_path=None, records=[(1, "r")])
    store.create_job(track=track, dataset_ids=[dataset.id])
    return store.claim_next_job("worker-1", "run-1")


def test_the_outcome_is_read_back_from_the_store_for_its_claim_only(store, main_track, tmp_path):
    job = claimed_job(store, main_track)
    outcome = AttemptOutcome(job_id=job.id, fence=job.fence, status=AttemptStatus.STOPPED, reason="told to stop",
                             run_id="run-1", step=7, total_steps=20, loss=0.25)
    record_outcome(tmp_path, store, outcome)
    outcome_file(tmp_path, job.id, job.fence).unlink()  # the store's copy alone
    assert read_outcome(tmp_path, store, job.id, job.fence) == outcome
    assert outcome.where == "step 7/20, loss 0.2500"
    assert read_outcome(tmp_path, store, job.id, job.fence + 1) is None  # another claim recorded nothing


def test_without_the_store_the_file_carries_the_outcome(store, main_track, tmp_path):
    job = claimed_job(store, main_track)
    crashed = AttemptOutcome(job_id=job.id, fence=job.fence, status=AttemptStatus.CRASHED,
                             reason="RuntimeError: boom", error="Traceback ...")
    record_outcome(tmp_path, None, crashed)  # the trainer could not reach the store
    assert read_outcome(tmp_path, store, job.id, job.fence) == crashed


def test_a_stale_claim_cannot_record_an_outcome_in_the_store(store, main_track, tmp_path):
    job = claimed_job(store, main_track)
    stale = AttemptOutcome(job_id=job.id, fence=job.fence - 1, status=AttemptStatus.SUCCEEDED, reason="late")
    with pytest.raises(StaleClaimError):
        record_outcome(tmp_path, store, stale)
    assert [e for e in store.job_events(job.id) if e.kind == "attempt_ended"] == []
