"""What the SmolLM2 export tests share: one short training, deployed."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from tests.cli_runner import run_honed


@pytest.fixture(scope="session")
def smollm2_trained(smollm2_base, gguf_cache, tmp_path_factory) -> SimpleNamespace:
    """A SmolLM2 workspace whose track ``main`` serves a 12-step LoRA on q, k, v and o
    (q and k: the rows the GGUF writer permutes) trained on ``person_json``: its ``root``,
    the ``env`` that finds the cached conversion, the ``run``, the deployed ``adapter``,
    the ``base_path`` and 12 held-out ``prompts``. The tests only read it and export it."""
    from honed.config import update_config_file
    from honed.data.synthetic import generate
    from honed.registry.deployment import deploy
    from honed.workspace import open_workspace

    env = {"HONED_CACHE": str(gguf_cache)}
    root = tmp_path_factory.mktemp("smollm2-trained") / "ws"
    run_honed("init", str(root), "--base", "smollm2", env=env)
    update_config_file(root, {
        "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "train": {"max_steps": 12, "lr": 3e-4, "batch_size": 8, "warmup_steps": 3, "heldout_fraction": 0.2,
                  "eval_every": 0, "checkpoint_every": 100, "threads": os.cpu_count() or 1},
    })
    data = root.parent / "people.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generate("person_json", 100, seed=4)))
    run_id = json.loads(run_honed("train", "-w", str(root), "--dataset", str(data), "--json", env=env).stdout)["run"]
    ws = open_workspace(root)
    with ws.open_store() as store:
        run = store.get_run(run_id)
        adapter = store.add_adapter(track="main", run_id=run.id, job_id=None, base_version=0, path=run.adapter_path)
        deploy(ws, store, adapter.id, force=True)
        base_path = ws.resolve_base_path(store, 0)
    heldout = [json.loads(line) for line in (ws.runs_dir / run_id / "heldout.jsonl").read_text().splitlines()]
    return SimpleNamespace(root=root, env=env, run=run, adapter=adapter, base_path=base_path,
                           prompts=[r["messages"][:-1] for r in heldout[:12]])
