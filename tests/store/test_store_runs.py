"""Runs, attempts, checkpoints and metrics."""

from __future__ import annotations

import math

import pytest
import sqlalchemy as sa

from honed.store import StaleAttemptError, Store, StoreError
from honed.store.schema import checkpoints, utc_now


def new_run(store: Store, run_id: str = "run-20261123-201500-ab12", track: str = "main"):
    return store.create_run(
        run_id=run_id, track=track, base_version=0, config={"lr": 1e-4}, dataset_ids=[1, 2]
    )


def test_run_lifecycle(store: Store, main_track: str) -> None:
    run = new_run(store)
    assert (run.status, run.attempt, run.ended_at) == ("running", 0, None)
    assert run.config == {"lr": 1e-4} and run.dataset_ids == [1, 2]
    assert store.start_attempt(run.id) == 1
    store.finish_run(run.id, status="failed", error="CUDA out of memory")
    failed = store.get_run(run.id)
    assert failed.status == "failed" and failed.error == "CUDA out of memory"
    assert failed.ended_at is not None and failed.ended_at.utcoffset().total_seconds() == 0
    assert store.start_attempt(run.id) == 2
    resumed = store.get_run(run.id)
    assert (resumed.status, resumed.error, resumed.ended_at) == ("running", None, None)
    store.finish_run(
        run.id, status="succeeded", final_metrics={"loss": 0.5}, adapter_path="/ws/a", attempt=2
    )
    done = store.get_run(run.id)
    assert done.status == "succeeded"
    assert (done.final_metrics, done.adapter_path) == ({"loss": 0.5}, "/ws/a")


def test_runs_are_listed_newest_first_per_track(store: Store, main_track: str) -> None:
    store.ensure_track("other", 0)
    for i in range(3):
        new_run(store, f"run-{i}")
    new_run(store, "run-other", track="other")
    assert [r.id for r in store.list_runs(main_track)] == ["run-2", "run-1", "run-0"]
    assert len(store.list_runs()) == 4
    assert [r.id for r in store.list_runs(limit=1)] == ["run-other"]


def test_unknown_or_duplicate_run_ids_are_named(store: Store, main_track: str) -> None:
    assert store.get_run("run-nope") is None
    for call in (
        lambda: store.start_attempt("run-nope"),
        lambda: store.finish_run("run-nope", status="failed"),
        lambda: store.record_checkpoint("run-nope", 10, "/x"),
        lambda: store.append_metrics("run-nope", [{"step": 1, "loss": 1.0}], attempt=1),
        lambda: store.get_metrics("run-nope"),
    ):
        with pytest.raises(StoreError, match="run-nope"):
            call()
    new_run(store, "run-1")
    with pytest.raises(StoreError, match="'run-1' already exists"):
        new_run(store, "run-1")
    with pytest.raises(StoreError, match="status 'done'"):
        store.finish_run("run-1", status="done")


def test_a_stale_attempt_cannot_overwrite_a_newer_one(store: Store, main_track: str) -> None:
    run = new_run(store)
    store.start_attempt(run.id)
    store.start_attempt(run.id)
    with pytest.raises(StaleAttemptError, match="attempt 1"):
        store.finish_run(run.id, status="failed", error="late", attempt=1)
    with pytest.raises(StaleAttemptError):
        store.record_checkpoint(run.id, 100, "/ckpt/100", attempt=1)
    assert store.get_run(run.id).status == "running"
    assert store.list_checkpoints(run.id) == []


def test_only_complete_checkpoints_are_listed(store: Store, main_track: str) -> None:
    run = new_run(store)
    assert store.latest_checkpoint(run.id) is None
    store.record_checkpoint(run.id, 20, "/ckpt/20")
    store.record_checkpoint(run.id, 10, "/ckpt/10")
    # A row left incomplete (written by a future step-by-step protocol or by hand) must
    # never be offered for a resume.
    engine = sa.create_engine(store.url)
    try:
        with engine.begin() as conn:
            conn.execute(
                checkpoints.insert().values(
                    run_id=run.id, step=30, path="/ckpt/30", complete=False, created_at=utc_now()
                )
            )
    finally:
        engine.dispose()
    assert [c.step for c in store.list_checkpoints(run.id)] == [10, 20]
    latest = store.latest_checkpoint(run.id)
    assert (latest.step, latest.path, latest.complete) == (20, "/ckpt/20", True)
    store.record_checkpoint(run.id, 20, "/ckpt/20-again")
    assert store.latest_checkpoint(run.id).path == "/ckpt/20-again"
    store.forget_checkpoint(run.id, 20)
    assert store.latest_checkpoint(run.id).step == 10


def test_metrics_keep_the_latest_attempt_of_each_step(store: Store, main_track: str) -> None:
    run = new_run(store)
    # Attempt 1 logs steps 1..6 and dies; attempt 2 resumes from the checkpoint at step 3.
    store.append_metrics(run.id, [{"step": s, "loss": 10.0 - s} for s in range(1, 7)], attempt=1)
    store.append_metrics(run.id, [{"step": s, "loss": 100.0 + s} for s in (4, 5)], attempt=2)
    store.append_metrics(run.id, [{"step": 3, "accuracy": 0.5}], attempt=1, kind="eval")

    rows = store.get_metrics(run.id)
    assert [(r["step"], r["attempt"]) for r in rows] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]
    assert rows[3]["loss"] == 104.0
    everything = store.get_metrics(run.id, latest_attempt_only=False)
    assert len(everything) == 8
    assert [r["step"] for r in store.get_metrics(run.id, kind="eval")] == [3]


def test_metrics_values_round_trip_including_nan(store: Store, main_track: str) -> None:
    run = new_run(store)
    store.append_metrics(
        run.id,
        [{"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-4,
          "tokens_per_s": 1234.5}],
        attempt=1,
    )
    store.append_metrics(run.id, [{"step": 2, "loss": 1.0}, {"step": 2, "loss": 0.9}], attempt=1)
    store.append_metrics(run.id, [{"step": 2, "loss": 0.8}], attempt=1)
    first, second = store.get_metrics(run.id)
    assert math.isnan(first["loss"]) and first["grad_norm"] == math.inf
    assert first["lr"] == 1e-4 and first["tokens_per_s"] == 1234.5
    assert second == {"step": 2, "attempt": 1, "loss": 0.8}
    with pytest.raises(StoreError, match="'step'"):
        store.append_metrics(run.id, [{"loss": 1.0}], attempt=1)
    with pytest.raises(StoreError, match="kind 'test'"):
        store.append_metrics(run.id, [{"step": 3}], attempt=1, kind="test")
