"""Benchmark: the evaluator's greedy answers on SmolLM2, seconds per 100 held-out answers,
continuous batching against transformers' ``generate`` in fixed batches.

    python benchmarks/eval_speed.py [--model smollm2|tiny] [--answers 100] [--batch-size 64]
                                    [--quick] [--json PATH]

Each job's evaluation decodes the held-out answers of the candidate and of the deployed
model greedily (``honed.evaluation.exact_match.generate_answers``). The baseline is what it
does: prompts sorted by length, cut into fixed batches of ``eval.batch_size``, each
batch through ``generate`` until its longest answer ends (rows that ended keep decoding
padding). The alternative measured is the server's decode loop (continuous batching):
up to ``batch_size`` rows at a time, each leaving the step it ends and the next prompt
taking its place. The evaluator keeps ``generate``: on this task the loop did not win
(benchmarks/README.md has the figures). Both run in
fresh child processes, one after the other, on the same prompts (held-out records of the
demo's ``person_json`` task, the answer budget the evaluator would give them); the report
says how many answers agree (greedy: all of them, up to the rounding of batched arithmetic).
``--quick``: the tiny model, 40 answers.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

try:
    import honed  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from headline import figure, load_average, write_headline  # noqa: E402


def loop_answers(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int, batch_size: int) -> list[str]:
    """The greedy answers through the server's decode loop: prompts by length, up to
    ``batch_size`` rows at a time, each leaving the step it ends (the loop's thread decodes
    in inference mode of its own)."""
    from honed.data.chat_encoding import encode_chat
    from honed.evaluation.exact_match import decode_until_stop, stop_token_ids
    from honed.server.batching import DecodeLoop, Row

    encoded = [encode_chat(tokenizer, m, add_generation_prompt=True).input_ids for m in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    stop_ids = stop_token_ids(model, tokenizer)
    rows = [Row(prompt=encoded[i], max_tokens=max_new_tokens, temperature=0.0, top_p=1.0, seed=0) for i in order]
    DecodeLoop(model, tokenizer, stop_ids, batch_size).run(rows)
    answers = [""] * len(prompts)
    for i, row in zip(order, rows, strict=True):
        answers[i] = decode_until_stop(tokenizer, row.tokens, stop_ids)
    return answers


def measure(model_name: str, answers: int, batch_size: int, continuous: bool) -> dict:
    """In a fresh process: load the model, answer the prompts, report the seconds."""
    import resource

    import torch

    from honed.data.synthetic import generate
    from honed.evaluation.exact_match import answer_budget, generate_answers
    from honed.training.model_loading import load_base_model, load_tokenizer

    if model_name == "tiny":
        from honed.models.tiny import tiny_base

        path, family = str(tiny_base()), "reversal"
    else:
        from honed.models.gguf_base import convert_gguf, smollm2_gguf

        path, family = str(convert_gguf(smollm2_gguf())), "person_json"
    model = load_base_model(path, torch.device("cpu")).eval()
    tokenizer = load_tokenizer(path)
    records = generate(family, answers, seed=7)
    budget = min(48, answer_budget(tokenizer, [r["messages"][-1]["content"] for r in records]))
    prompts = [r["messages"][:-1] for r in records]
    answer = loop_answers if continuous else generate_answers
    answer(model, tokenizer, prompts[:2], max_new_tokens=2, batch_size=2)  # warm
    started = time.perf_counter()
    outputs = answer(model, tokenizer, prompts, max_new_tokens=budget, batch_size=batch_size)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "per_100": 100 * seconds / len(prompts), "budget": budget, "outputs": outputs,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def in_child(*args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--answers", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64, help="eval.batch_size (64 by default).")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model, answers = ("tiny", 40) if args.quick else (args.model, args.answers)
    load_before = load_average()
    print(f"load before {load_before}; {model}, {answers} held-out answers, batch size {args.batch_size}")
    before = in_child(model, answers, args.batch_size, False)
    after = in_child(model, answers, args.batch_size, True)
    agree = sum(a == b for a, b in zip(before["outputs"], after["outputs"], strict=True))
    for name, run in (("generate, fixed batches", before), ("decode loop, continuous", after)):
        print(f"{name:<26}{run['per_100']:>8.1f} s per 100 answers{run['peak_rss_mb']:>9.0f} MB peak RSS")
    print(f"decode loop x{before['per_100'] / after['per_100']:.2f} the speed of generate; "
          f"answer budget {after['budget']} tokens; {agree} of {answers} answers agree")
    print(f"load after {load_average()}")
    write_headline(args.json, "eval_speed", [
        figure(f"{model}: seconds per 100 greedy held-out answers, decode loop", round(after["per_100"], 2), "s",
               baseline="generate in fixed batches (the evaluator's), same prompts",
               baseline_value=round(before["per_100"], 2)),
        figure("answers that agree", agree, f"of {answers}", ratio=None),
    ], load_before=load_before, details={"budget": after["budget"], "batch_size": args.batch_size,
                                         "peak_rss_mb": {"before": before["peak_rss_mb"],
                                                         "after": after["peak_rss_mb"]}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
