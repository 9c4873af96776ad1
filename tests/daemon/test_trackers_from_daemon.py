"""train.report_to from the daemon: the trainer reports each step, and the evaluation that
follows in the same attempt adds the eval figures, the gates' verdict and the adapter's
path to the same MLflow run and TensorBoard directory."""

from __future__ import annotations

import json

import pytest

from tests.cli_runner import run_honed
from tests.daemon.conftest import configure, synth, wait_for

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def test_the_daemon_reports_steps_then_the_verdict_to_the_same_runs(make_workspace, tiny_random_base, start_daemon,
                                                                    tmp_path, monkeypatch):
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the daemon inherits it: the default store, please
    ws = configure(make_workspace(tiny_random_base), {"train": {"report_to": ["tensorboard", "mlflow"]}})
    store = ws.open_store()
    start_daemon(ws)
    data = synth(tmp_path / "rev.jsonl", 80)
    job = json.loads(run_honed("queue", "add", str(data), "-w", str(ws.root), "--json").stdout)
    job = wait_for(lambda: (j := store.get_job(job["id"])).state in ("succeeded", "rejected", "failed") and j,
                   240, f"job {job['id']}")
    assert job.state == "succeeded", [e.message for e in store.job_events(job.id)]
    adapter = store.adapter_for_run(job.run_id)
    train = store.get_metrics(job.run_id, kind="train")
    last = train[-1]["step"]

    ids = json.loads((ws.runs_dir / job.run_id / "trackers.json").read_text())
    # A client of its own: mlflow.set_tracking_uri would export MLFLOW_TRACKING_URI to every later test.
    client = mlflow.MlflowClient(tracking_uri=ids["mlflow"]["tracking_uri"])
    run = client.get_run(ids["mlflow"]["run_id"])
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(r["step"], r["loss"]) for r in train]
    assert run.info.status == "FINISHED"
    assert run.data.tags["verdict"].startswith("passed") and run.data.tags["adapter_path"] == adapter.path
    assert run.data.tags["adapter_id"] == str(adapter.id) and run.data.metrics["gate/passed"] == 1.0
    heldout = adapter.evaluation["candidate"]["heldout"]["loss"]
    assert run.data.metrics["gate/candidate/heldout/loss"] == heldout
    assert run.data.metrics["gate/baseline/heldout/loss"] == adapter.evaluation["baseline"]["heldout"]["loss"]

    events = EventAccumulator(ids["tensorboard"]["log_dir"])
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in train]
    assert [(e.step, e.value) for e in events.Scalars("gate/candidate/heldout/loss")] == [
        (last, pytest.approx(heldout, rel=1e-6))]
    verdict = events.Tensors("verdict/text_summary")[-1]
    assert verdict.step == last and verdict.tensor_proto.string_val[0].decode().startswith("passed")
