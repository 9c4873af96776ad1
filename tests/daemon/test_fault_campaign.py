"""The fault campaign: a real daemon's trainer is SIGKILLed at 20 points (the phases of an
optimizer step, of a checkpoint write, of the adapter save and of the evaluation, and
random steps), once each, through :mod:`honed.faults`. Every job must come back from its
one lost attempt to what an uninterrupted job reaches: the same final loss, the same
adapter weights, one candidate, evaluated and deployed."""

from __future__ import annotations

import os
import random

import pytest
import torch
from safetensors.torch import load_file

from honed.data.datasets import add_dataset_file
from tests.daemon.conftest import configure, synth
from tests.daemon.test_supervision import finished

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

_rng = random.Random(os.getpid())
STEPS = 7  # 64 records, a tenth held out, batch 8: one epoch of 7 steps; checkpoints at 4 and 7
FAULTS = [
    *(f"step.{phase}@6" for phase in ("start", "backward", "update", "logged")),
    "step.logged@4",  # logged, the checkpoint of step 4 not yet written
    *(f"checkpoint.{phase}@2" for phase in ("staging_created", "files_written", "files_synced", "meta_written",
                                             "staging_synced", "renamed", "parent_synced")),
    *(f"adapter.{phase}" for phase in ("staging_created", "staging_synced", "renamed")),
    "eval.registered", "eval.scored", "eval.recorded",
    *(f"{point}@{_rng.randint(1, STEPS)}" for point in ("step.start", "step.backward")),
]


def _job_result(store, job_id: int) -> dict:
    job = store.get_job(job_id)
    run = store.get_run(job.run_id)
    adapters = [a for a in store.list_adapters() if a.run_id == run.id]
    deployed = store.deployed_adapter("main")
    weights = load_file(os.path.join(adapters[0].path, "adapter_model.safetensors")) if adapters else {}
    return {"state": job.state, "failures": job.failures, "loss": run.final_metrics.get("loss"),
            "adapters": len(adapters), "deployed": deployed is not None and adapters and deployed.id == adapters[0].id,
            "weights": weights}


def test_twenty_kill_points_each_come_back_to_the_uninterrupted_result(make_workspace, tiny_random_base,
                                                                       start_daemon, monkeypatch, tmp_path):
    assert len(FAULTS) == 20
    ws = configure(make_workspace(tiny_random_base), {"train": {"checkpoint_every": 4},
                                                      "daemon": {"max_attempts": 3}})
    store = ws.open_store()
    dataset = add_dataset_file(ws, store, synth(ws.root / "rev.jsonl", 64, seed=21), track="main",
                               mode="strict").dataset.id

    def run_job(fault: str | None, index: int = 0) -> dict:
        once = tmp_path / f"killed-{index}"  # a random point may repeat a chosen one
        if fault:
            monkeypatch.setenv("HONED_FAULT", fault)
            monkeypatch.setenv("HONED_FAULT_ONCE", str(once))
        job = store.create_job(track="main", dataset_ids=[dataset])
        daemon = start_daemon(ws)
        finished(store, job.id)
        daemon.stop()
        monkeypatch.delenv("HONED_FAULT", raising=False)
        result = _job_result(store, job.id)
        result["killed"] = once.exists()
        result["events"] = [e.message for e in store.job_events(job.id)]
        return result

    reference = run_job(None)
    assert reference["state"] == "succeeded" and reference["deployed"], reference["events"]
    assert store.get_run(store.list_jobs()[0].run_id).final_metrics["total_steps"] == STEPS, "the points need it"
    table, wrong = [], []
    for index, fault in enumerate(FAULTS, 1):
        got = run_job(fault, index)
        same_weights = got["weights"].keys() == reference["weights"].keys() and all(
            torch.allclose(got["weights"][k], reference["weights"][k], atol=1e-6) for k in got["weights"])
        ok = (got["killed"] and got["state"] == "succeeded" and got["failures"] == 1 and got["adapters"] == 1
              and got["deployed"] and got["loss"] == pytest.approx(reference["loss"], rel=1e-5) and same_weights)
        table.append(f"{fault:32} killed={got['killed']} {got['state']:9} failures={got['failures']} "
                     f"adapters={got['adapters']} deployed={bool(got['deployed'])} same_weights={same_weights} "
                     f"loss={got['loss']}")
        if not ok:
            wrong.append(f"{fault}: {got['events']}")
    print("\n".join(table))
    assert not wrong, f"{len(FAULTS) - len(wrong)}/20 came back:\n" + "\n".join(table) + "\n" + "\n".join(wrong)
    store.close()
