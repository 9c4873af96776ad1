"""SFT on the thumbs-up answers alone against KTO on every thumb, on the same budget.

The application of ``addition.py`` without a server: SmolLM2-135M-Instruct answers 240
questions sampled at temperature 0.7, the app's check gives each a thumb, and two adapters
are trained with ``honed train`` for the same number of steps: SFT on the thumbs-up
answers, and KTO on all of them (``train.kto_balance`` weighs the rarer thumbs up). Each
is then asked 80 questions nobody asked, greedily and sampled as the application samples
(four answers each, the same seeds for every model), and compared prompt by prompt with
the base (sign test over prompts, as the gate's win rate does).

    python examples/thumbs/compare_objectives.py            # a table
    python examples/thumbs/compare_objectives.py --json     # the figures

About 10 minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import addition  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traffic", type=int, default=240)
    parser.add_argument("--fresh", type=int, default=80)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from honed.evaluation.exact_match import Sampling, generate_answers
    from honed.evaluation.statistics import mcnemar_p
    from honed.models.gguf_base import convert_gguf, smollm2_gguf
    from honed.training.model_loading import load_base_model, load_tokenizer, pick_device

    base = str(convert_gguf(smollm2_gguf()))
    tokenizer = load_tokenizer(base)
    questions = addition.pairs(args.traffic + args.fresh, seed=0)
    traffic, fresh = questions[:args.traffic], questions[args.traffic:]

    def answers(model, asked, sampling) -> list[str]:
        return generate_answers(model, tokenizer, [addition.messages(a, b) for a, b in asked], max_new_tokens=32,
                                batch_size=40, sampling=sampling)

    model = load_base_model(base, pick_device())
    served = answers(model, traffic, Sampling(args.temperature, 1.0, seed=1))
    thumbs = [{"prompt": addition.messages(a, b), "completion": [{"role": "assistant", "content": text}],
               "label": addition.right(text, a, b)} for (a, b), text in zip(traffic, served) if text.strip()]
    ups = [{"messages": t["prompt"] + t["completion"]} for t in thumbs if t["label"]]

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "honed.cli", "init", str(work / "ws"), "--base", base], check=True,
                       capture_output=True)
        (work / "thumbs.jsonl").write_text("".join(json.dumps(t) + "\n" for t in thumbs))
        (work / "ups.jsonl").write_text("".join(json.dumps(t) + "\n" for t in ups))
        adapters = {}
        for name, objective, data in (("sft on thumbs up", "sft", "ups.jsonl"), ("kto on all thumbs", "kto",
                                                                                 "thumbs.jsonl")):
            out = work / objective
            settings = [f"train.objective={objective}", f"train.lr={args.lr}", "train.batch_size=8",
                        f"train.max_steps={args.steps}", "train.epochs=100", "train.warmup_steps=3",
                        "train.heldout_fraction=0", "train.eval_every=0",
                        'lora.target_modules=["q_proj","k_proj","v_proj","o_proj"]']
            subprocess.run([sys.executable, "-m", "honed.cli", "train", "-w", str(work / "ws"), "--retrain-seen",
                            "--dataset", str(work / data), "--out", str(out),
                            *[x for s in settings for x in ("--set", s)]],
                           check=True, capture_output=True)
            adapters[name] = out

        from peft import PeftModel

        def judged(model) -> tuple[list[int], list[int]]:
            greedy = [int(addition.right(t, a, b)) for (a, b), t in zip(fresh, answers(model, fresh, Sampling()))]
            sampled = [0] * len(fresh)
            for k in range(args.samples):
                for i, ((a, b), t) in enumerate(zip(fresh, answers(model, fresh,
                                                                   Sampling(args.temperature, 1.0, seed=k)))):
                    sampled[i] += addition.right(t, a, b)
            return greedy, sampled

        base_greedy, base_sampled = judged(model)
        rows["base"] = {"greedy": sum(base_greedy) / len(fresh), "sampled": sum(base_sampled) / (len(fresh)
                                                                                                * args.samples)}
        for name, path in adapters.items():
            tuned = PeftModel.from_pretrained(load_base_model(base, pick_device()), str(path)).eval()
            greedy, sampled = judged(tuned)
            wins = sum(s > b for s, b in zip(sampled, base_sampled))
            losses = sum(s < b for s, b in zip(sampled, base_sampled))
            rows[name] = {"greedy": sum(greedy) / len(fresh), "sampled": sum(sampled) / (len(fresh) * args.samples),
                          "wins": wins, "losses": losses, "p_better": mcnemar_p(wins, losses)}
    result = {"traffic": len(thumbs), "thumbs_up": len(ups), "fresh": len(fresh), "steps": args.steps,
              "lr": args.lr, "temperature": args.temperature, "samples": args.samples, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{len(thumbs)} answers thumbed, {len(ups)} up; {args.steps} steps each; {len(fresh)} fresh questions")
    print(f"{'':20} {'greedy':>7} {'sampled':>8} {'vs base (sampled)':>24}")
    for name, row in rows.items():
        versus = (f"{row['wins']} won, {row['losses']} lost, p={row['p_better']:.2g}" if "wins" in row else "")
        print(f"{name:20} {row['greedy']:7.1%} {row['sampled']:8.1%} {versus:>24}")


if __name__ == "__main__":
    main()
