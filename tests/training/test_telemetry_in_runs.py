"""Telemetry in real runs on the tiny model: per-step system figures, per-layer LoRA
change, and the energy of every attempt in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from honed.data.synthetic import write_synthetic
from honed.training.layer_stats import layer_stat_keys, lora_delta_norms
from honed.training.oneshot import train_once
from honed.workspace import open_workspace

FAST = [
    "train.batch_size=8", "train.max_seq_len=128", "train.eval_every=0", "train.threads=1",
    "train.warmup_steps=2", "train.heldout_fraction=0.1",
]
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _train(ws_root: Path, data: Path | None, *assignments: str, control=None, resume: str | None = None) -> dict:
    from honed.config import parse_assignments

    ws = open_workspace(ws_root, parse_assignments([*FAST, *assignments]))
    with ws.open_store() as store:
        return train_once(ws, store, datasets=[str(data)] if data else [], eval_file=None, base_version=None,
                          resume=resume, out=None, track="main", control=control)


def _rows(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    train, _ = write_synthetic("reversal", 200, tmp_path_factory.mktemp("data") / "rev.jsonl", seed=1)
    return train


@pytest.fixture(scope="module")
def seven_steps(tmp_path_factory, tiny_random_base, data):
    """One run of 7 steps logging layer norms every 3 steps."""
    from honed.workspace import init_workspace

    ws = init_workspace(tmp_path_factory.mktemp("telemetry") / "ws", base=str(tiny_random_base))
    summary = _train(ws.root, data, "train.max_steps=7", "telemetry.layer_stats_every=3")
    assert summary["status"] == "succeeded"
    return ws, summary


def test_train_rows_carry_process_figures(seven_steps):
    ws, summary = seven_steps
    rows = _rows(ws.runs_dir / summary["run"], "train")
    assert [r["step"] for r in rows] == list(range(1, 8))
    for row in rows:
        assert row["rss_mb"] > 10 and row["cpu_percent"] >= 0
        assert row["peak_rss_mb"] >= row["rss_mb"] - 1 and row["tokens_per_s"] > 0
    assert any(r["cpu_percent"] > 0 for r in rows), "training keeps a core busy"


def test_layer_norms_every_n_steps_and_at_the_last(seven_steps):
    ws, summary = seven_steps
    run_dir = ws.runs_dir / summary["run"]
    rows = _rows(run_dir, "layers")
    assert [r["step"] for r in rows] == [3, 6, 7]
    expected = {f"layer.{i}.{m}" for i in range(4) for m in MODULES}
    for row in rows:
        assert set(row) - {"kind", "attempt", "step"} == expected
    first, last = rows[0], rows[-1]
    assert all(last[k] > 0 for k in expected)
    # B starts at zero: the adapter's change grows from the first log on.
    assert sum(last[k] for k in expected) > 1.5 * sum(first[k] for k in expected)
    assert sum(last[k] > first[k] for k in expected) >= 0.9 * len(expected)

    with ws.open_store() as store:
        stored = store.get_metrics(summary["run"], kind="layers")
    assert [r["step"] for r in stored] == [3, 6, 7]
    assert stored[-1]["layer.2.down_proj"] == pytest.approx(last["layer.2.down_proj"])


def test_the_manifest_carries_the_labelled_energy_estimate(seven_steps):
    ws, summary = seven_steps
    run_dir = ws.runs_dir / summary["run"]
    energy = json.loads((run_dir / "manifest.json").read_text())["energy"]
    # This machine has no GPU and no readable RAPL: the estimate path runs.
    assert energy["measured"] is False and energy["method"] == "estimate"
    assert energy["joules"] > 0 and energy["kwh"] == pytest.approx(energy["joules"] / 3.6e6)
    assert "telemetry.cpu_watts_per_core" in energy["basis"] and "CPU time" in energy["basis"]
    assert "attempt" in energy["covers"]
    assert [a["attempt"] for a in energy["attempts"]] == [1] and energy["attempts_without_reading"] == []
    assert (run_dir / energy["log"]).is_file()


def test_a_paused_and_resumed_run_sums_the_energy_of_both_attempts(make_workspace, tiny_random_base, data):
    ws = make_workspace(tiny_random_base)
    paused = _train(ws.root, data, "train.max_steps=4", "train.checkpoint_every=100",
                    control=lambda step: "pause" if step == 2 else None)
    assert paused["status"] == "paused"
    run_dir = ws.runs_dir / paused["run"]
    first = json.loads((run_dir / "manifest.json").read_text())["energy"]
    assert [a["status"] for a in first["attempts"]] == ["paused"] and first["joules"] > 0

    resumed = _train(ws.root, None, resume=paused["run"])
    assert resumed["status"] == "succeeded" and resumed["attempt"] == 2
    energy = json.loads((run_dir / "manifest.json").read_text())["energy"]
    assert [(a["attempt"], a["status"]) for a in energy["attempts"]] == [(1, "paused"), (2, "succeeded")]
    assert energy["joules"] == pytest.approx(sum(a["joules"] for a in energy["attempts"]), abs=1e-3)
    assert energy["joules"] > first["joules"]


def test_layer_norms_change_nothing_about_training(make_workspace, tiny_random_base, data):
    losses = {}
    for every in (0, 1):
        ws = make_workspace(tiny_random_base, f"every-{every}")
        summary = _train(ws.root, data, "train.max_steps=4", "lora.dropout=0.1", f"telemetry.layer_stats_every={every}")
        run_dir = ws.runs_dir / summary["run"]
        losses[every] = [r["loss"] for r in _rows(run_dir, "train")]
        assert len(_rows(run_dir, "layers")) == (4 if every else 0)
    assert losses[0] == losses[1]


def test_the_norm_is_that_of_the_full_delta(tiny_random_base):
    from honed.config import LoraSettings
    from honed.training.model_loading import attach_lora, load_base_model

    model = attach_lora(load_base_model(str(tiny_random_base), torch.device("cpu")), LoraSettings(r=4, alpha=8), 0)
    assert set(lora_delta_norms(model).values()) == {0.0}  # B starts at zero
    torch.manual_seed(0)
    expected = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_B") and "default" in module.lora_B:
            with torch.no_grad():
                module.lora_B["default"].weight.normal_()
            delta = module.scaling["default"] * module.lora_B["default"].weight @ module.lora_A["default"].weight
            expected[name] = torch.linalg.matrix_norm(delta).item()
    norms = lora_delta_norms(model)
    assert list(norms.values()) == pytest.approx(list(expected.values()), rel=1e-5)
    assert list(norms) == layer_stat_keys(list(expected))


def test_keys_are_layer_and_module_and_stay_unique():
    assert layer_stat_keys(["base_model.model.model.layers.12.self_attn.q_proj", "base_model.model.lm_head"]) == [
        "layer.12.q_proj", "lm_head"]
    assert layer_stat_keys(["m.layers.0.self_attn.q_proj", "m.layers.0.cross_attn.q_proj"]) == [
        "layer.0.self_attn.q_proj", "layer.0.cross_attn.q_proj"]
