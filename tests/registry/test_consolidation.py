"""Consolidation: the merged base alone answers like old base + adapter, it becomes the
track's base with lineage, the old base stays, and the next job trains on the new one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from honed.data.synthetic import write_synthetic
from honed.registry.consolidation import ConsolidationError, consolidate
from honed.registry.deployment import deploy
from tests.cli_runner import run_honed


def test_consolidated_base_reproduces_base_plus_adapter_and_the_next_job_trains_on_it(make_workspace, tmp_path):
    from peft import PeftModel

    from honed.evaluation.exact_match import generate_answers
    from honed.models.tiny import tiny_base
    from honed.training.model_loading import load_base_model, load_tokenizer, pick_device
    from tests.daemon.conftest import configure

    ws = configure(make_workspace(tiny_base()), {"train": {"epochs": 1.0, "lr": 5e-3}})
    data, _ = write_synthetic("reversal", 200, tmp_path / "rev.jsonl", seed=1, eval_n=0)
    trained = json.loads(run_honed("train", "-w", str(ws.root), "--dataset", str(data), "--json").stdout)
    store = ws.open_store()
    with pytest.raises(ConsolidationError, match="no deployed adapter"):
        consolidate(ws, store, "main", "nothing yet")
    run = store.get_run(trained["run"])
    adapter = store.add_adapter(track="main", run_id=run.id, job_id=None, base_version=0, path=run.adapter_path)
    deploy(ws, store, adapter.id, force=True)

    out = run_honed("consolidate", "--description", "reversal merged", "-w", str(ws.root), "--json")
    done = json.loads(out.stdout)
    assert done["version"] == 1 and done["max_logit_diff"] <= 1e-3
    assert done["same_answers"] == done["prompts_checked"] > 0
    new_base = store.get_base(1)
    assert new_base.parent_version == 0 and new_base.description == "reversal merged"
    assert new_base.lineage["adapter"] == adapter.id and new_base.lineage["datasets"] == run.dataset_ids
    assert store.get_track("main").base_version == 1
    old_base = ws.resolve_base_path(store, 0)
    assert Path(old_base).is_dir() and (ws.bases_dir / "v1").is_dir()  # the old base stays
    assert store.deployed_adapter("main") is None  # the bare new base holds what the adapter taught
    assert store.list_deployments("main")[0].action == "consolidate"

    # The merged base alone gives the greedy answers of old base + adapter.
    prompts = [json.loads(line)["messages"][:1] for line in (ws.runs_dir / run.id / "heldout.jsonl").open()][:16]
    tokenizer = load_tokenizer(old_base)
    old = PeftModel.from_pretrained(load_base_model(old_base, pick_device()), run.adapter_path)
    merged = load_base_model(str(ws.bases_dir / "v1"), pick_device())
    assert generate_answers(merged, tokenizer, prompts) == generate_answers(old, tokenizer, prompts)

    # An adapter of the old base can no longer be made live on the consolidated track.
    with pytest.raises(Exception, match="trained on base v0, but track 'main' is on base v1"):
        deploy(ws, store, adapter.id, force=True)

    more, _ = write_synthetic("reversal", 100, tmp_path / "more.jsonl", seed=2, eval_n=0)
    after = json.loads(run_honed("train", "-w", str(ws.root), "--dataset", str(more), "--json").stdout)
    next_run = store.get_run(after["run"])
    assert next_run.base_version == 1 and next_run.config["base"] == str(ws.bases_dir / "v1")
    store.close()


@pytest.mark.slow
def test_consolidation_killed_at_any_phase_leaves_the_previous_base_and_can_be_redone(make_workspace, tmp_path):
    """SIGKILL (a power cut) at every phase of writing the merged base: the store still
    has v0 only, v0 and the deployed adapter still load, and the next consolidation
    replaces whatever the killed one left, becoming v1."""
    import subprocess
    import sys

    import torch

    from honed.atomic_files import DIRECTORY_PHASES
    from honed.models.tiny import tiny_base
    from honed.training.model_loading import load_base_model, with_adapter
    from tests.daemon.conftest import configure

    ws = configure(make_workspace(tiny_base()), {"train": {"max_steps": 4}})
    data, _ = write_synthetic("reversal", 40, tmp_path / "rev.jsonl", seed=1, eval_n=0)
    trained = json.loads(run_honed("train", "-w", str(ws.root), "--dataset", str(data), "--json").stdout)
    store = ws.open_store()
    run = store.get_run(trained["run"])
    adapter = store.add_adapter(track="main", run_id=run.id, job_id=None, base_version=0, path=run.adapter_path)
    deploy(ws, store, adapter.id, force=True)
    root = Path(__file__).resolve().parents[2]
    # After a kill at or past "renamed" an unrecorded bases/v1 is there: the next
    # consolidation replaces it, passing the two "old_*" phases.
    for phase in ("staging_created", "staging_synced", "renamed", "old_moved_aside", "parent_synced", "old_removed"):
        assert phase in DIRECTORY_PHASES
        proc = subprocess.run([sys.executable, "-m", "tests.kill_at_phase", phase, "cli", "consolidate",
                               "--description", "merged", "-w", str(ws.root)],
                              cwd=root, capture_output=True, text=True, timeout=600)
        assert proc.returncode == -9, f"not killed at {phase}: {proc.stderr[-2000:]}"
        assert [b.version for b in store.list_bases()] == [0], phase
        assert store.get_track("main").base_version == 0 and store.deployed_adapter("main").id == adapter.id
        with_adapter(load_base_model(ws.resolve_base_path(store, 0), torch.device("cpu")), adapter.path)
    done = json.loads(run_honed("consolidate", "--description", "merged", "-w", str(ws.root), "--json").stdout)
    assert done["version"] == 1 and store.get_track("main").base_version == 1
    assert [p.name for p in ws.bases_dir.iterdir() if p.name.startswith(".")] == []  # no debris left
    load_base_model(str(ws.bases_dir / "v1"), torch.device("cpu"))
    store.close()
