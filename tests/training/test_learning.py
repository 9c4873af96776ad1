"""Learning: the tiny base, fine-tuned by honed on a family it does not know, gets
clearly better at it within a minute on two CPU cores. This is the user's first
experience of honed (the README's one-shot command and `honed demo --base tiny` do the
same)."""

from __future__ import annotations

from honed.config import parse_assignments
from honed.data.synthetic import write_synthetic
from honed.training.oneshot import train_once
from honed.workspace import init_workspace, open_workspace

# Far from the edge of what the tiny base can learn: on the shipped base, letter shift goes
# 0% -> 2% at 90 steps, 64% at 120 and 100% at 180 (2,000 records, seed 3; 2026-12-01).
# 3,000 records for 3 epochs are 282 steps, well past where learning completes.
SETTINGS: list[str] = ["train.epochs=3"]
MIN_GAIN = 0.60


def test_fine_tuning_the_tiny_base_raises_exact_match_on_a_new_family(tmp_path):
    ws = init_workspace(tmp_path / "ws", base="tiny")
    train_file, eval_file = write_synthetic("shift", 3000, tmp_path / "shift.jsonl", seed=0)
    ws = open_workspace(ws.root, parse_assignments(SETTINGS))
    store = ws.open_store()
    try:
        summary = train_once(ws, store, datasets=[str(train_file)], eval_file=eval_file, base_version=None,
                             resume=None, out=None, track="main")
    finally:
        store.close()
    before, after = summary["exact_match_before"], summary["exact_match_after"]
    print(f"shift exact match: before {before:.1%}, after {after:.1%}, steps {summary['step']}")
    assert summary["status"] == "succeeded"
    assert before < 0.1, "the base should not know the family yet"
    assert after - before >= MIN_GAIN, f"exact match only went from {before:.1%} to {after:.1%}"
