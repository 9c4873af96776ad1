"""SmolLM2 (the Llama architecture, whose q/k rows the GGUF writer permutes) exported
after a short training: the f16 GGUF, loaded back by transformers, gives base + adapter's
greedy answers on the held-out prompts; q8_0's agreement is reported; the Modelfile
carries SmolLM2's default system prompt. Marked ``real_model``."""

from __future__ import annotations

import json
import os

import pytest

from tests.cli_runner import run_honed

pytestmark = pytest.mark.real_model
torch = pytest.importorskip("torch")


def test_smollm2_gguf_round_trip(smollm2_base, gguf_cache, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from honed.config import update_config_file
    from honed.data.synthetic import generate
    from honed.evaluation.exact_match import generate_answers
    from honed.registry.deployment import deploy
    from honed.training.model_loading import load_base_model, load_tokenizer
    from honed.workspace import open_workspace

    env = {"HONED_CACHE": str(gguf_cache)}
    root = tmp_path / "ws"
    run_honed("init", str(root), "--base", "smollm2", env=env)
    update_config_file(root, {
        "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},  # q and k: the permuted ones
        "train": {"max_steps": 12, "lr": 3e-4, "batch_size": 8, "warmup_steps": 3, "heldout_fraction": 0.2,
                  "eval_every": 0, "checkpoint_every": 100, "threads": os.cpu_count() or 1},
    })
    data = tmp_path / "people.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generate("person_json", 100, seed=4)))
    run_id = json.loads(run_honed("train", "-w", str(root), "--dataset", str(data), "--json", env=env).stdout)["run"]
    ws = open_workspace(root)
    store = ws.open_store()
    run = store.get_run(run_id)
    adapter = store.add_adapter(track="main", run_id=run.id, job_id=None, base_version=0, path=run.adapter_path)
    deploy(ws, store, adapter.id, force=True)
    base_path = ws.resolve_base_path(store, 0)
    store.close()

    heldout = [json.loads(line) for line in (ws.runs_dir / run_id / "heldout.jsonl").read_text().splitlines()]
    prompts = [r["messages"][:-1] for r in heldout[:12]]
    model = PeftModel.from_pretrained(load_base_model(base_path, torch.device("cpu")), run.adapter_path).eval()
    tokenizer = load_tokenizer(base_path)
    expected = generate_answers(model, tokenizer, prompts, max_new_tokens=48)
    with model.disable_adapter():
        assert generate_answers(model, tokenizer, prompts, max_new_tokens=48) != expected, "the adapter must matter"

    figures = {}
    for quant in ("f16", "q8_0"):
        out = tmp_path / f"out-{quant}"
        done = json.loads(run_honed("export", "track:main", "--format", "gguf", "--quant", quant, "--out", str(out),
                                    "-w", str(root), "--json", env=env).stdout)
        assert done["architecture"] == "llama"
        name = done["gguf"]
        loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
        answers = generate_answers(loaded, AutoTokenizer.from_pretrained(out, gguf_file=name), prompts,
                                   max_new_tokens=48)
        same = sum(a == b for a, b in zip(answers, expected))
        figures[quant] = {"seconds": done["seconds"], "mb": round(done["files"][name]["bytes"] / 1e6, 1),
                          "same": f"{same}/{len(prompts)}"}
        modelfile = (out / "Modelfile").read_text()
        assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile
        assert 'PARAMETER stop "<|im_end|>"' in modelfile and "TEMPLATE" in modelfile
        if quant == "f16":
            assert answers == expected
        else:
            assert same / len(prompts) >= 0.75
    print(f"SmolLM2 export figures: {figures}")
