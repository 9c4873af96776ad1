"""The trainer on the real tiny model: what users rely on after ``honed train``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from honed.config import TrainSettings
from honed.data.synthetic import write_synthetic
from honed.training.oneshot import train_once
from honed.workspace import open_workspace
from tests.cli_runner import run_honed

FAST = [
    "train.batch_size=8", "train.max_seq_len=128", "train.eval_every=0", "train.threads=1",
    "train.warmup_steps=2", "train.heldout_fraction=0.1",
]


def _settings(*assignments: str) -> dict:
    from honed.config import parse_assignments

    return parse_assignments([*FAST, *assignments])


def _train(ws_root: Path, data: Path, *assignments: str, control=None) -> dict:
    ws = open_workspace(ws_root, _settings(*assignments))
    store = ws.open_store()
    try:
        return train_once(ws, store, datasets=[str(data)], eval_file=None, base_version=None,
                          resume=None, out=None, track="main", control=control)
    finally:
        store.close()


@pytest.fixture
def reversal_data(tmp_path) -> Path:
    train, _ = write_synthetic("reversal", 300, tmp_path / "data" / "rev.jsonl", seed=1)
    return train


def test_adapter_weights_change_and_base_weights_do_not(make_workspace, tiny_random_base, reversal_data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ws = make_workspace(tiny_random_base)
    base_before = load_file(str(tiny_random_base / "model.safetensors"))
    summary = _train(ws.root, reversal_data, "train.max_steps=6")
    assert summary["status"] == "succeeded"

    run_dir = ws.runs_dir / summary["run"]
    init = load_file(str(run_dir / "adapter_init.safetensors"))
    trained = load_file(str(Path(summary["adapter"]) / "adapter_model.safetensors"))
    assert init.keys() == trained.keys() and len(trained) > 0
    changed = [k for k in trained if not torch.equal(init[k], trained[k])]
    assert len(changed) == len(trained), "every LoRA matrix should have moved"

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_random_base), summary["adapter"])
    for name, tensor in base_before.items():
        # PEFT renames wrapped layers' weights to ...base_layer.weight.
        key = name.replace(".weight", ".base_layer.weight") if any(
            m in name for m in ("proj",)) else name
        found = dict(model.base_model.model.named_parameters()).get(key)
        if found is None:
            continue
        assert torch.equal(found.detach(), tensor), f"base weight {name} changed"
    assert load_file(str(tiny_random_base / "model.safetensors")).keys() == base_before.keys()


def test_batch_one_times_accumulation_four_equals_batch_four(tiny_random_base, reversal_data):
    from honed.config import LoraSettings
    from honed.data.ingest import ingest_file
    from honed.data.packing import pack_batch
    from honed.data.plan import read_jsonl
    from honed.data.tokenization import tokenize_record
    from honed.training.model_loading import attach_lora, load_base_model, load_tokenizer
    from honed.training.trainer import examples_for_step, train_step

    tokenizer = load_tokenizer(str(tiny_random_base))
    result = ingest_file(reversal_data, reversal_data.parent / "norm", mode="strict")
    examples = [tokenize_record(tokenizer, r, 128) for r in read_jsonl(result.normalized_path)][:64]

    def run(batch_size: int, grad_accum: int, optimizer_class=torch.optim.AdamW):
        cfg = TrainSettings(batch_size=batch_size, grad_accum=grad_accum, max_seq_len=128)
        model = attach_lora(load_base_model(str(tiny_random_base), torch.device("cpu")), LoraSettings(), 0)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = optimizer_class(params, lr=1e-2)
        losses = []
        for step in range(3):
            micro = examples_for_step(step, len(examples), cfg)
            batches = [pack_batch([examples[i] for i in mb], 128, tokenizer.pad_token_id) for mb in micro]
            losses.append(train_step(model, optimizer, params, batches, cfg, 1e-2)["loss"])
        return losses, [p.detach().clone() for p in params]

    losses_a, params_a = run(batch_size=4, grad_accum=1)
    losses_b, params_b = run(batch_size=1, grad_accum=4)
    # The first step sees identical weights: only summation order differs. Later steps
    # carry float32 rounding through AdamW (which divides by sqrt(v)), hence rel 1e-5.
    assert losses_a[0] == pytest.approx(losses_b[0], abs=1e-6)
    assert losses_a == pytest.approx(losses_b, rel=1e-5)
    # Weights are compared after SGD, whose update is linear in the gradient: AdamW's first
    # update is ±lr for any non-zero gradient, so rounding noise on a near-zero gradient
    # can flip it, which says nothing about accumulation.
    _, params_a = run(batch_size=4, grad_accum=1, optimizer_class=torch.optim.SGD)
    _, params_b = run(batch_size=1, grad_accum=4, optimizer_class=torch.optim.SGD)
    for a, b in zip(params_a, params_b):
        assert torch.allclose(a, b, atol=1e-6)


def _metrics(run_dir: Path) -> dict[int, float]:
    """Train loss per step, the latest attempt winning (as the store reports it)."""
    best: dict[int, tuple[int, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "train" and best.get(row["step"], (0, 0))[0] <= row["attempt"]:
            best[row["step"]] = (row["attempt"], row["loss"])
    return {step: loss for step, (_, loss) in best.items()}


@pytest.mark.slow  # CI runs it in its second call
def test_sigkilled_run_resumes_with_the_same_loss_at_every_later_step(make_workspace, tiny_random_base, reversal_data):
    sets = [f"--set={s}" for s in (*FAST, "train.max_steps=16", "train.checkpoint_every=4", "lora.dropout=0.1")]
    straight = make_workspace(tiny_random_base, "straight")
    run_honed("train", "-w", str(straight.root), "--dataset", str(reversal_data), *sets)
    (straight_run,) = list(straight.runs_dir.iterdir())
    expected = _metrics(straight_run)
    assert sorted(expected) == list(range(1, 17))

    killed = make_workspace(tiny_random_base, "killed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "honed.cli", "train", "-w", str(killed.root), "--dataset", str(reversal_data), *sets],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ},
    )
    deadline = time.monotonic() + 300
    run_dir = None
    while time.monotonic() < deadline and proc.poll() is None:
        runs = list(killed.runs_dir.iterdir())
        if runs and (runs[0] / "metrics.jsonl").exists():
            run_dir = runs[0]
            steps = _metrics(run_dir)
            if steps and max(steps) >= 10:  # past the checkpoint at 8, mid-epoch
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()
    assert run_dir is not None and max(_metrics(run_dir)) < 16, "the run ended before it was killed"

    run_honed("train", "-w", str(killed.root), "--resume", run_dir.name)
    resumed = _metrics(run_dir)
    assert sorted(resumed) == list(range(1, 17))
    for step in range(1, 17):
        assert abs(resumed[step] - expected[step]) <= 1e-6, f"step {step}: {resumed[step]} != {expected[step]}"
    attempts = {json.loads(line)["attempt"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()}
    assert attempts == {1, 2}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["attempts"] == 2 and manifest["steps"] == 16
    # The killed attempt wrote no energy reading; the manifest says so rather than guess.
    assert [a["attempt"] for a in manifest["energy"]["attempts"]] == [2]
    assert manifest["energy"]["attempts_without_reading"] == [1]


def test_pause_writes_a_checkpoint_and_resume_finishes_the_run(make_workspace, tiny_random_base, reversal_data):
    ws = make_workspace(tiny_random_base)
    summary = _train(ws.root, reversal_data, "train.max_steps=8", "train.checkpoint_every=100",
                     control=lambda step: "pause" if step == 3 else None)
    assert summary["status"] == "paused" and summary["step"] == 3
    run_dir = ws.runs_dir / summary["run"]
    assert (run_dir / "checkpoints" / "step-00000003" / "checkpoint.json").is_file()
    assert summary["adapter"] is None
    out = run_honed("train", "-w", str(ws.root), "--resume", summary["run"], "--json")
    result = json.loads(out.stdout)
    assert result["status"] == "succeeded" and result["step"] == 8 and result["attempt"] == 2


def test_exploding_gradients_with_policy_fail_fail_the_run_and_keep_no_bad_update(make_workspace, tiny_random_base,
                                                                                  reversal_data):
    ws = make_workspace(tiny_random_base)
    summary = _train(ws.root, reversal_data, "train.max_steps=5", "train.grad_norm_limit=1e-9",
                     "train.nonfinite_policy=fail")
    assert summary["status"] == "failed"
    assert "grad_norm_limit" in summary["error"]
    assert summary["adapter"] is None


def test_policy_skip_never_applies_a_bad_update(make_workspace, tiny_random_base, reversal_data):
    ws = make_workspace(tiny_random_base)
    summary = _train(ws.root, reversal_data, "train.max_steps=4", "train.grad_norm_limit=1e-9",
                     "train.nonfinite_policy=skip", "train.checkpoint_every=2")
    assert summary["status"] == "succeeded"
    assert summary["final_metrics"]["bad_steps"] == 4
    run_dir = ws.runs_dir / summary["run"]
    init = load_file(str(run_dir / "adapter_init.safetensors"))
    for name in ("step-00000002", "step-00000004"):
        saved = load_file(str(run_dir / "checkpoints" / name / "adapter_model.safetensors"))
        assert all(torch.equal(init[k], saved[k]) for k in init), f"{name} holds a bad update"


def test_policy_lower_lr_halves_the_rate_after_each_bad_step(make_workspace, tiny_random_base, reversal_data):
    ws = make_workspace(tiny_random_base)
    summary = _train(ws.root, reversal_data, "train.max_steps=3", "train.grad_norm_limit=1e-9",
                     "train.nonfinite_policy=lower_lr", "train.warmup_steps=0", "train.schedule=constant")
    rows = [json.loads(line) for line in (ws.runs_dir / summary["run"] / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["kind"] == "train"]
    assert lrs == pytest.approx([3e-3, 1.5e-3, 0.75e-3])
    assert all("grad_norm_limit" in r["skipped"] for r in rows if r["kind"] == "train")


def test_records_already_trained_are_skipped_unless_asked(make_workspace, tiny_random_base, reversal_data):
    ws = make_workspace(tiny_random_base)
    assert _train(ws.root, reversal_data, "train.max_steps=2")["status"] == "succeeded"
    from honed.data.plan import PlanError

    with pytest.raises(PlanError, match="already trained"):
        _train(ws.root, reversal_data, "train.max_steps=2")
    again = _train(ws.root, reversal_data, "train.max_steps=2", "train.retrain_seen=true")
    assert again["status"] == "succeeded"
