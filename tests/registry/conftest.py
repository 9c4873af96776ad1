"""Shared by the export and engine tests: a workspace with a trained adapter (the
expensive part, made once per session) and cheap real adapters."""

from __future__ import annotations

import json

import pytest

from honed.data.synthetic import write_synthetic
from tests.cli_runner import run_honed


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A workspace on the pretrained tiny base with one adapter (reversal, a task the base
    does not know), deployed on ``main``; its held-out prompts and honed's own answers."""
    import torch

    from honed.evaluation.exact_match import answer_budget, generate_answers
    from honed.evaluation.scorers import reference
    from honed.models.tiny import tiny_base
    from honed.registry.deployment import deploy
    from honed.training.model_loading import load_base_model, load_tokenizer, with_adapter
    from honed.workspace import init_workspace
    from tests.daemon.conftest import configure

    root = tmp_path_factory.mktemp("export")
    ws = configure(init_workspace(root / "ws", base=str(tiny_base())), {"train": {"epochs": 1.0, "lr": 5e-3}})
    data, _ = write_synthetic("reversal", 200, root / "rev.jsonl", seed=1, eval_n=0)
    run_id = json.loads(run_honed("train", "-w", str(ws.root), "--dataset", str(data), "--json").stdout)["run"]
    store = ws.open_store()
    run = store.get_run(run_id)
    adapter = store.add_adapter(track="main", run_id=run.id, job_id=None, base_version=0, path=run.adapter_path)
    deploy(ws, store, adapter.id, force=True)
    base_path = ws.resolve_base_path(store, 0)
    store.close()
    records = [json.loads(line) for line in (ws.runs_dir / run_id / "heldout.jsonl").open()][:16]
    prompts = [r["messages"][:-1] for r in records]
    tokenizer = load_tokenizer(base_path)
    budget = answer_budget(tokenizer, [reference(r) for r in records])
    model = with_adapter(load_base_model(base_path, torch.device("cpu")), run.adapter_path).eval()
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=budget)
    bare = generate_answers(load_base_model(base_path, torch.device("cpu")), tokenizer, prompts, max_new_tokens=budget)
    assert answers != bare, "the adapter must change the answers, or equal answers prove nothing"
    return {"ws": ws, "root": root, "adapter": adapter, "prompts": prompts, "answers": answers, "budget": budget,
            "base_path": base_path}


def real_adapter(ws, store, name: str, seed: int, scale: float = 0.05, track: str = "main"):
    """A real LoRA adapter on base v0 with random B (so merging changes the weights; none
    of the training), recorded as having passed its gates."""
    import torch
    from peft import LoraConfig, get_peft_model

    from honed.training.model_loading import load_base_model

    torch.manual_seed(seed)
    model = get_peft_model(load_base_model(ws.resolve_base_path(store, 0), torch.device("cpu")),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.normal_(0, scale)
    path = ws.adapters_dir / name
    model.save_pretrained(path)
    adapter = store.add_adapter(track=track, run_id=None, job_id=None, base_version=0, path=str(path))
    return store.record_evaluation(adapter.id, {"heldout": {"exact_match": 0.9}},
                                   {"passed": True, "failed": [], "rules": []}, "candidate")
