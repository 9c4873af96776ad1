"""The store's views: typed by honed.states, frozen, and with one JSON form, the one
``--json``, the HTTP API and the MCP tools all send."""

from __future__ import annotations

import json
import math

import pydantic
import pytest

from honed.states import AdapterState, JobState, Priority, RunStatus
from honed.store import Store
from honed.store.serialize import plain


def _views(store: Store, track: str) -> list:
    """One of each view, with the values JSON cannot carry as they are (NaN, infinity)."""
    base = store.get_base(0)
    dataset = store.add_dataset(name="d", track=track, file_hash="0" * 64, source_path="/s", stored_path="/d",
                                mode="strict", n_records=1, n_rejected=0, reject_path=None, records=[(1, "a" * 64)])
    job = store.create_job(track=track, dataset_ids=[dataset.id], priority="high")
    run = store.create_run(run_id="r1", track=track, base_version=0, config={"lr": 1e-3},
                           dataset_ids=[dataset.id])
    store.finish_run("r1", status="succeeded", final_metrics={"loss": math.nan, "grad": math.inf})
    adapter = store.add_adapter(track=track, run_id="r1", job_id=job.id, base_version=0, path="/a")
    store.record_evaluation(adapter.id, {"score": 0.5}, {"passed": True}, "candidate")
    deployment = store.switch_deployment(track, adapter.id, action="deploy", reason="test")
    experience = store.add_experience(track=track, messages=[{"role": "user", "content": "hi"}], output="yo",
                                      latency_ms=math.nan)
    answer = store.add_teacher_answer(experience_id=experience.id, track=track, model="t", status="failed",
                                      score=-math.inf)
    return [base, store.get_track(track), dataset, job, store.get_run(run.id), store.get_adapter(adapter.id),
            deployment, store.request_command(job.id, "pause"), *store.job_events(job.id), experience, answer,
            store.register_worker("w1", "host", 1, "/ws")]


def test_a_views_json_form_is_plains(store: Store, main_track: str) -> None:
    """The models serialize themselves (what FastAPI sends) exactly as plain() writes
    them (what the CLI and MCP send): same keys, same order, same values."""
    for view in _views(store, main_track):
        assert json.dumps(view.model_dump(mode="json")) == json.dumps(plain(view)), type(view).__name__


def test_views_carry_the_state_enums_and_stay_frozen(store: Store, main_track: str) -> None:
    views = {type(v).__name__: v for v in _views(store, main_track)}
    job, run, adapter = views["JobInfo"], views["RunInfo"], views["AdapterInfo"]
    assert (job.priority, job.state) == (Priority.HIGH, JobState.QUEUED) and job.state == "queued"
    assert run.status is RunStatus.SUCCEEDED and math.isnan(run.final_metrics["loss"])
    assert adapter.state is AdapterState.DEPLOYED and adapter.name == f"{main_track}-a{adapter.id}"
    assert plain(run)["final_metrics"] == {"loss": "nan", "grad": "inf"}
    # SQLite keeps a NaN in a float column as NULL; PostgreSQL keeps it.
    slow = views["ExperienceInfo"].model_copy(update={"latency_ms": math.nan, "auto_score": -math.inf})
    assert plain(slow)["latency_ms"] == slow.model_dump(mode="json")["latency_ms"] == "nan"
    assert plain(slow)["auto_score"] == slow.model_dump(mode="json")["auto_score"] == "-inf"
    with pytest.raises(pydantic.ValidationError):
        job.state = JobState.FAILED
