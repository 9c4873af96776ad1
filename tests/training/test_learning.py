"""Learning: the tiny base, fine-tuned by honed on a family it does not know, gets
clearly better at it within minutes on two CPU cores. This is the user's first
experience of honed (the README's main command does the same)."""

from __future__ import annotations

from honed.config import parse_assignments
from honed.data.synthetic import write_synthetic
from honed.training.oneshot import train_once
from honed.workspace import init_workspace, open_workspace

# Exactly the README's one-shot command (4000 records, seed 0, 4 epochs as in the demo).
# Learning on this family is delayed and then jumps: with the default 3 epochs (357
# steps) a fresh install on 2026-11-24 reached only 7.0%, with 4 (476 steps) 56.8%.
# Where the jump falls depends on the data seed:
# with a 200-record eval split instead of the default 400 (so other training records)
# 595 steps reached only 10.5%. Tuning the tiny recipe so that learning is robust to
# the seed is open work.
SETTINGS: list[str] = ["train.epochs=4"]
MIN_GAIN = 0.30


def test_fine_tuning_the_tiny_base_raises_exact_match_on_a_new_family(tmp_path):
    ws = init_workspace(tmp_path / "ws", base="tiny")
    train_file, eval_file = write_synthetic("reversal", 4000, tmp_path / "rev.jsonl", seed=0)
    ws = open_workspace(ws.root, parse_assignments(SETTINGS))
    store = ws.open_store()
    try:
        summary = train_once(ws, store, datasets=[str(train_file)], eval_file=eval_file, base_version=None,
                             resume=None, out=None, track="main")
    finally:
        store.close()
    before, after = summary["exact_match_before"], summary["exact_match_after"]
    print(f"reversal exact match: before {before:.1%}, after {after:.1%}, steps {summary['step']}")
    assert summary["status"] == "succeeded"
    assert before < 0.1, "the base should not know the family yet"
    assert after - before >= MIN_GAIN, f"exact match only went from {before:.1%} to {after:.1%}"
