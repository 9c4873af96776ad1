"""The daemon closes the loop: a better candidate is deployed, a worse one (trained on
shuffled answers) is rejected with its numbers while the deployment stays put, and a
rollback restores the previous adapter with the hooks seeing every switch."""

from __future__ import annotations

import json
import random

from honed.data.synthetic import generate
from tests.cli_runner import run_honed
from tests.daemon.conftest import configure, wait_for


def write(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_better_deploys_worse_is_rejected_and_rollback_restores(make_workspace, start_daemon, tmp_path):
    from honed.models.tiny import tiny_base

    hooks = tmp_path / "hooks.log"
    # The pretrained tiny base (cached after the first build): it learns reversal fast
    # enough that a candidate trained on shuffled answers is measurably worse.
    ws = configure(make_workspace(tiny_base()), {
        "train": {"epochs": 2.0, "lr": 5e-3},
        "eval": {"regression_records": 100},
        "gates": {"rules": [
            {"set": "heldout", "scorer": "loss", "max_regression": 0.05},
            {"set": "regression", "scorer": "loss", "max_regression": 0.05},
        ]},
        "deploy": {"command": f'echo "$HONED_ACTION $HONED_ADAPTER_ID" >> {hooks}'},
    })
    good = list(generate("reversal", 300, seed=1))
    answers = [r["messages"][-1]["content"] for r in good]
    random.Random(0).shuffle(answers)
    shuffled = [{"messages": [r["messages"][0], {"role": "assistant", "content": a}]} for r, a in zip(good, answers)]
    store = ws.open_store()
    start_daemon(ws)

    def run_job(name, records, *extra: str) -> dict:
        what = write(tmp_path / name, records) if records else name
        job = json.loads(run_honed("queue", "add", what, *extra, "-w", str(ws.root), "--json").stdout)
        return wait_for(lambda: (j := store.get_job(job["id"])).state in ("succeeded", "rejected", "failed") and j,
                        240, f"job {job['id']}")

    first = run_job("good.jsonl", good)
    assert first.state == "succeeded", [e.message for e in store.job_events(first.id)]
    deployed = store.deployed_adapter("main")
    assert deployed is not None and deployed.run_id == first.run_id
    assert deployed.verdict["passed"] and deployed.verdict["baseline"] == "base v0"
    heldout = deployed.evaluation["candidate"]["heldout"]
    assert heldout["loss"] < deployed.evaluation["baseline"]["heldout"]["loss"]  # better than the bare base
    assert heldout["samples"] and {"prompt", "reference", "output"} <= set(heldout["samples"][0])

    worse = run_job("shuffled.jsonl", shuffled)
    assert worse.state == "rejected"
    rejected = next(a for a in store.list_adapters("main") if a.run_id == worse.run_id)
    assert rejected.state == "rejected" and not rejected.verdict["passed"]
    assert any(f.startswith("regression loss") and f"deployed adapter {deployed.id}" in f
               for f in rejected.verdict["failed"]), rejected.verdict
    assert "failed its gates" in store.job_events(worse.id)[-1].message
    assert store.deployed_adapter("main").id == deployed.id  # the deployment stayed put

    # The good data once more (same dataset, same seed): a candidate as good as the
    # deployed one passes its gates and becomes the new deployment.
    third = run_job(str(first.dataset_ids[0]), None, "--set", "train.retrain_seen=true")
    assert third.state == "succeeded", [e.message for e in store.job_events(third.id)]
    newer = store.deployed_adapter("main")
    assert newer.id != deployed.id and newer.run_id == third.run_id

    back = json.loads(run_honed("rollback", "-w", str(ws.root), "--json").stdout)
    assert back["adapter"] == deployed.id and back["hooks_ok"]
    assert store.deployed_adapter("main").id == deployed.id
    assert (ws.root / "deployments" / "main" / "current").resolve() == ws.root.joinpath(deployed.path).resolve()
    assert hooks.read_text().split("\n")[:-1] == [f"deploy {deployed.id}", f"deploy {newer.id}",
                                                   f"rollback {deployed.id}"]
    status = json.loads(run_honed("status", "-w", str(ws.root), "--json").stdout)
    assert status["tracks"] == [{"name": "main", "base_version": 0,
                                 "deployed": {"adapter": deployed.id, "name": deployed.name}}]
    listed = run_honed("adapters", "list", "-w", str(ws.root)).stdout
    assert "rejected" in listed and "deployed" in listed and "retired" in listed
    shown = run_honed("adapters", "show", str(rejected.id), "-w", str(ws.root)).stdout
    assert "FAIL regression loss" in shown
    store.close()
