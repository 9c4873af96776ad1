"""The gates through the real evaluator on the tiny model: per-record outcomes come back
paired for candidate and baseline, a candidate that changes nothing is refused with "no
measurable gain", one that is clearly better passes, and the shipped general control set
is worked out once per base ("0 of 40 kept" for a base that answers none)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from honed.config import GateSettings  # noqa: E402
from honed.data.synthetic import generate  # noqa: E402
from honed.evaluation.evaluate import evaluate_candidate  # noqa: E402
from honed.evaluation.gates import decide  # noqa: E402

ANSWER = "42"


def make_adapter(base, folder, steps: int):
    """A LoRA adapter on ``base`` trained ``steps`` steps to answer every prompt "42"
    (0 steps: the fresh adapter, which changes nothing)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from honed.config import LoraSettings
    from honed.models.pretrain import encode_for_answer_loss
    from honed.training.model_loading import attach_lora

    model = attach_lora(AutoModelForCausalLM.from_pretrained(base), LoraSettings(r=8, alpha=16.0), seed=0)
    if steps:
        tokenizer = AutoTokenizer.from_pretrained(base)
        records = [{"messages": [r["messages"][0], {"role": "assistant", "content": ANSWER}]}
                   for r in generate("copy", 16, seed=1)]
        batch = encode_for_answer_loss(tokenizer, records)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        for _ in range(steps):
            model(**batch, use_cache=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


def test_the_real_evaluator_feeds_paired_outcomes_to_the_gates(make_workspace, tiny_random_base, tmp_path):
    ws = make_workspace(tiny_random_base)
    store = ws.open_store()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    heldout = [{"messages": [r["messages"][0], {"role": "assistant", "content": ANSWER}]}
               for r in generate("arithmetic", 30, seed=7)]
    (run_dir / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))
    base = ws.resolve_base_path(store)

    def evaluate(adapter):
        return evaluate_candidate(ws, store, track="main", base_path=base, base_version=0, candidate_path=adapter,
                                  run_dir=run_dir, dataset_ids=[])

    same = evaluate(make_adapter(base, tmp_path / "fresh", steps=0))
    outcomes = same["outcomes"]
    assert len(outcomes["candidate"]["heldout"]["exact_match"]) == 30
    assert outcomes["candidate"]["heldout"] == outcomes["baseline"]["heldout"]  # the fresh adapter changes nothing
    assert "outcomes" not in same["candidate"]["heldout"] and len(json.dumps(outcomes)) < 1000  # kept small
    assert same["control"]["general"]["kept"] == 0 and same["control"]["general"]["of"] == 40
    # Inside bases/v0 when the workspace holds the base; beside it when the base is the user's own folder.
    cache = Path(same["control"]["general"]["cache"])
    assert cache in (ws.bases_dir / "v0" / "honed_control.json", ws.bases_dir / "v0.honed_control.json")
    assert json.loads(cache.read_text())["kept"] == []

    verdict = decide(same, GateSettings().rules, False)
    assert not verdict["passed"] and verdict["held"] == []
    assert verdict["failed"][0].startswith("gain heldout exact_match: no measurable gain over base v0")
    retention = next(r for r in verdict["rules"] if r["kind"] == "retention")
    assert retention["skipped"] and "general 0 (0 of 40 kept for the base)" in retention["detail"]

    stamp = cache.stat().st_mtime_ns  # the base is not asked again: the cache is read, not rewritten
    # 80 steps sat on the edge: on 2026-12-02's machine the adapter answered "422222" (the
    # end-of-turn token not yet learned); 120 were enough there, 200 leave a margin.
    better = evaluate(make_adapter(base, tmp_path / "forty-two", steps=200))
    assert cache.stat().st_mtime_ns == stamp
    verdict = decide(better, GateSettings().rules, False)
    gain = verdict["rules"][0]
    assert verdict["passed"], verdict
    assert gain["b"] >= 20 and gain["c"] == 0 and gain["p"] < 1e-6
    store.close()
