"""``honed gc``: what the [storage] policy removes (checkpoints of finished runs, weights of
rejected and long-superseded adapters, leftovers of killed writes), what it always keeps
(bases, the deployed adapter and the last deployments, runs a job may still continue,
manifests, metrics, store records), and that what a user added goes only with --yes."""

from __future__ import annotations

import json
import os
import time

import numpy as np
from safetensors.numpy import save_file

from honed.config import update_config_file
from honed.workspace import open_workspace
from tests.cli_runner import run_honed
from tests.daemon.conftest import synth

NOW_POLICY = {"storage": {"checkpoint_days": 0.0, "rejected_days": 0.0, "keep_deployments": 2}}


def _adapter(ws, store, name: str):
    folder = ws.adapters_dir / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    save_file({"w": np.zeros((64, 64), np.float32)}, str(folder / "adapter_model.safetensors"))
    return store.add_adapter(track="main", run_id=None, job_id=None, base_version=0, path=str(folder))


def _run_with_checkpoint(ws, store, dataset: int, finished: bool):
    run_id = f"run-{'done' if finished else 'paused'}"
    store.create_run(run_id=run_id, track="main", base_version=0, config={}, dataset_ids=[dataset])
    checkpoint = ws.runs_dir / run_id / "checkpoints" / "step-00000004"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter.safetensors").write_bytes(b"x" * 5000)
    (ws.runs_dir / run_id / "manifest.json").write_text("{}")
    store.finish_run(run_id, status="succeeded" if finished else "paused")
    return run_id, checkpoint


def test_gc_removes_by_policy_keeps_what_matters_and_user_files_only_with_yes(make_workspace, tiny_random_base):
    ws = make_workspace(tiny_random_base)
    update_config_file(ws.root, NOW_POLICY)
    ws = open_workspace(ws.root)
    run_honed("add", str(synth(ws.root / "rev.jsonl", 30)), "-w", str(ws.root))
    with ws.open_store() as store:
        dataset = store.list_datasets()[0].id
        _, done_checkpoint = _run_with_checkpoint(ws, store, dataset, finished=True)
        job = store.create_job(track="main", dataset_ids=[dataset])
        assert store.claim_next_job("w", "run-paused").run_id == "run-paused"
        _, paused_checkpoint = _run_with_checkpoint(ws, store, dataset, finished=False)
        store.end_attempt(job.id, "paused", "paused by test")
        rejected = _adapter(ws, store, "main-a1")
        store.reject_adapter(rejected.id)
        first, second, third = (_adapter(ws, store, f"main-a{i}") for i in (2, 3, 4))
        for adapter in (first, second, third):  # first is superseded past the last 2 deployments
            store.switch_deployment("main", adapter.id, action="deploy", reason="test", allowed=("candidate",))
    stale = ws.adapters_dir / ".staging-main-a9-0123abcd"
    stale.mkdir()
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    export = ws.root / "exports" / "main-a4-merged"
    export.mkdir(parents=True)
    (export / "model.safetensors").write_bytes(b"y" * 1000)

    plan = json.loads(run_honed("gc", "--dry-run", "--json", "-w", str(ws.root)).stdout)
    would = {r["path"]: r["why"] for r in plan["removals"]}
    assert set(would) == {str(done_checkpoint), rejected.path, first.path, str(stale)}, would
    assert "rejected candidate 1" in would[rejected.path] and "superseded" in would[first.path]
    assert all(os.path.exists(p) for p in would), "a dry run removes nothing"
    assert [r["path"] for r in plan["kept_for_user"]] == [str(export)], "your file was added from where it is"

    text = run_honed("gc", "-w", str(ws.root)).stdout
    assert "removed 4 items" in text and "'honed gc --yes' removes them too" in " ".join(text.split())
    assert not any(os.path.exists(p) for p in would)
    for kept in (paused_checkpoint, second.path, third.path, export, ws.runs_dir / "run-done" / "manifest.json",
                 tiny_random_base / "config.json"):
        assert os.path.exists(kept), kept
    journal = [json.loads(line) for line in (ws.logs_dir / "gc.jsonl").read_text().splitlines()]
    assert {j["path"] for j in journal} == set(would)
    with ws.open_store() as store:
        assert store.get_adapter(rejected.id).state == "rejected", "the record stays"

    refused = run_honed("deploy", str(first.id), "--force", "-w", str(ws.root), check=False)
    assert refused.returncode != 0 and "weights are gone" in " ".join(refused.stderr.split()), refused.stderr
    run_honed("rollback", "-w", str(ws.root))  # to the one before: its weights were kept

    run_honed("gc", "--yes", "-w", str(ws.root))
    assert not export.exists()
    assert os.path.exists(paused_checkpoint) and (tiny_random_base / "config.json").exists()
