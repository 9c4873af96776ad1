"""SmolLM2 (the Llama architecture, whose q/k rows the GGUF writer permutes) exported
after a short training: the f16 GGUF, loaded back by transformers, gives base + adapter's
greedy answers on the held-out prompts; q8_0's agreement is reported; the Modelfile
carries SmolLM2's default system prompt. Marked ``real_model``."""

from __future__ import annotations

import json

import pytest

from tests.cli_runner import run_honed

pytestmark = pytest.mark.real_model
torch = pytest.importorskip("torch")


def test_smollm2_gguf_round_trip(smollm2_trained, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from honed.evaluation.exact_match import generate_answers
    from honed.training.model_loading import load_base_model, load_tokenizer

    root, env, run, prompts = smollm2_trained.root, smollm2_trained.env, smollm2_trained.run, smollm2_trained.prompts
    base_path = smollm2_trained.base_path
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
