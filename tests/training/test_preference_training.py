"""DPO in honed's training recipe: the SFT lifecycle holds (pause, exact resume, metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from honed.data.plan import Plan, read_jsonl, write_plan
from honed.data.synthetic import write_synthetic
from honed.states import RunStatus
from honed.training.recipe import run_attempt_of
from honed.training.runs import prepare_run, resume_spec
from honed.workspace import open_workspace

SETTINGS = [
    "train.objective=dpo", "train.beta=0.5", "train.batch_size=4", "train.max_seq_len=128", "train.eval_every=0",
    "train.threads=1", "train.warmup_steps=2", "train.heldout_fraction=0.1", "train.max_steps=12",
    "train.checkpoint_every=4", "train.lr=1e-2", "lora.dropout=0.1",
]
FIGURES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


@pytest.fixture
def reversal_pairs(tmp_path) -> Path:
    """Preference pairs of the reversal task: chosen the right answer, rejected a near miss."""
    train, _ = write_synthetic("reversal", 40, tmp_path / "data" / "rev.jsonl", seed=1, kind="preference")
    return train


def _prepare(tmp_path: Path, base: Path, data: Path, name: str):
    from honed.config import parse_assignments
    from honed.data.datasets import add_dataset_file
    from honed.workspace import init_workspace

    init_workspace(tmp_path / name, base=str(base))
    ws = open_workspace(tmp_path / name, parse_assignments(SETTINGS))
    store = ws.open_store()
    added = add_dataset_file(ws, store, data, track="main", mode="strict")
    assert added.dataset.kind == "preference"
    return ws, store, prepare_run(ws, store, [added.dataset.id], track="main")


def _figures(run_dir: Path) -> dict[int, dict]:
    """Each step's training row, the latest attempt winning."""
    rows: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "train" and rows.get(row["step"], {"attempt": 0})["attempt"] <= row["attempt"]:
            rows[row["step"]] = row
    return rows


def test_a_paused_dpo_run_resumes_with_the_same_figures_at_every_later_step(tmp_path, tiny_random_base,
                                                                            reversal_pairs):
    _, store, spec = _prepare(tmp_path, tiny_random_base, reversal_pairs, "straight")
    try:
        outcome = run_attempt_of(spec, store)
    finally:
        store.close()
    assert outcome.status == RunStatus.SUCCEEDED and outcome.step == 12
    expected = _figures(spec.run_dir)
    assert sorted(expected) == list(range(1, 13))
    assert all(set(FIGURES) <= set(row) for row in expected.values())
    assert "val_loss" in outcome.final_metrics
    init = load_file(str(spec.run_dir / "adapter_init.safetensors"))
    trained = load_file(str(outcome.adapter_path / "adapter_model.safetensors"))
    assert all(not torch.equal(init[k], trained[k]) for k in trained)

    ws, store, spec = _prepare(tmp_path, tiny_random_base, reversal_pairs, "paused")
    try:
        paused = run_attempt_of(spec, store, control=lambda step: "pause" if step == 6 else None)
        assert paused.status == RunStatus.PAUSED and paused.step == 6
        resumed = run_attempt_of(resume_spec(ws, store, spec.run_id), store)
    finally:
        store.close()
    assert resumed.status == RunStatus.SUCCEEDED and resumed.attempt == 2
    got = _figures(spec.run_dir)
    assert sorted(got) == list(range(1, 13))
    assert {got[s]["attempt"] for s in got} == {1, 2}
    for step in range(1, 13):
        for key in FIGURES:
            assert abs(got[step][key] - expected[step][key]) <= 1e-6, f"step {step} {key}"


def test_a_record_that_is_not_a_pair_fails_the_run_naming_it(tmp_path, tiny_random_base, reversal_pairs):
    _, store, spec = _prepare(tmp_path, tiny_random_base, reversal_pairs, "ws")
    plan_train = list(read_jsonl(spec.run_dir / "train.jsonl"))
    plan_train[0] = {"hash": plan_train[0]["hash"], "messages": [{"role": "user", "content": "hi"},
                                                                 {"role": "assistant", "content": "yo"}]}
    write_plan(Plan(train=plan_train, heldout=[]), spec.run_dir)
    from honed.data.tokenization import TokenizationError

    try:
        with pytest.raises(TokenizationError, match=rf"train record {plan_train[0]['hash'][:12]}.*"
                                                     r"train.objective = 'dpo' needs a preference pair"):
            run_attempt_of(spec, store)
        assert store.get_run(spec.run_id).status == RunStatus.FAILED
    finally:
        store.close()


@pytest.mark.parametrize("balance", [True, False])
def test_kto_on_one_sided_thumbs_weighs_the_rarer_label_up_and_the_manifest_says_so(tmp_path, tiny_random_base,
                                                                                    balance):
    from honed.config import parse_assignments
    from honed.data.datasets import add_dataset_file
    from honed.workspace import init_workspace

    # Thumbs as an application gets them: three down for every one up.
    train, _ = write_synthetic("reversal", 40, tmp_path / "data" / "rev.jsonl", seed=1, kind="unpaired")
    records = [json.loads(line) for line in train.read_text().splitlines()]
    for i, record in enumerate(records):
        record["label"] = i % 4 == 0
    train.write_text("".join(json.dumps(r) + "\n" for r in records))
    init_workspace(tmp_path / "ws", base=str(tiny_random_base))
    settings = [s for s in SETTINGS if not s.startswith(("train.objective", "train.heldout_fraction"))]
    ws = open_workspace(tmp_path / "ws", parse_assignments(
        [*settings, "train.objective=kto", "train.heldout_fraction=0", "train.max_steps=2",
         "train.desirable_weight=1.5", f"train.kto_balance={str(balance).lower()}"]))
    with ws.open_store() as store:
        dataset = add_dataset_file(ws, store, train, track="main", mode="strict").dataset
        assert dataset.kind == "unpaired"
        spec = prepare_run(ws, store, [dataset.id], track="main")
        assert run_attempt_of(spec, store).status == RunStatus.SUCCEEDED
    up = sum(r["label"] for r in records)
    weights = json.loads((spec.run_dir / "manifest.json").read_text())["kto_weights"]
    assert (weights["desirable"], weights["undesirable"]) == (up, len(records) - up)
    expected = 1.5 * (len(records) - up) / up if balance else 1.5
    assert weights["desirable_weight"] == pytest.approx(expected) and weights["undesirable_weight"] == 1.0
