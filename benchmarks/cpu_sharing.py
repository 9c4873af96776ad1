"""Benchmark: a trainer and the server on one CPU, SmolLM2-135M: training steps/s and
served tokens/s with the server on its usual thread count against
``server.threads_while_training`` (1 by default).

    python benchmarks/cpu_sharing.py [--seconds 60] [--server-threads 1] [--json PATH]

Two child processes, each in its own process as in honed (the daemon's server and a
trainer): the trainer trains a LoRA on q/k/v/o with AdamW on 4 rows of 200 tokens, step
after step; the server answers greedily, 16 new tokens at a time, on a thread of its own
that sets its torch thread count through the server's own
:mod:`honed.server.decode_threads` before each answer, as the server's decode loop does.
Four phases of ``--seconds`` each: the trainer alone, the server alone, then both side by
side with the server on its usual count (``threads_while_training = 0``: the baseline)
and on ``--server-threads`` (what a trainer's claim on the CPU makes it use).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

try:
    import honed  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from headline import figure, load_average, write_headline  # noqa: E402


def child(role: str, base: str, seconds: float, server_threads: int) -> None:
    """One side, in its own process: print its rate as JSON."""
    import threading

    import torch

    from honed.training.model_loading import load_base_model

    model = load_base_model(base, torch.device("cpu"))
    if role == "train":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                  "o_proj"]))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        x = torch.randint(0, 1000, (4, 200), generator=torch.Generator().manual_seed(0))
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model(input_ids=x, labels=x).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
        print(json.dumps({"steps_per_s": steps / (time.perf_counter() - started)}), flush=True)
        return
    from honed.server import decode_threads

    decode_threads.set_up()
    decode_threads.share(server_threads or None)
    prompt = torch.randint(0, 1000, (1, 60), generator=torch.Generator().manual_seed(1))
    result = {}

    def serve() -> None:  # the server decodes on a thread of its own
        tokens, started = 0, time.perf_counter()
        with torch.inference_mode():
            while time.perf_counter() - started < seconds:
                decode_threads.apply()
                model.generate(prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False)
                tokens += 16
        result.update(tokens_per_s=tokens / (time.perf_counter() - started), threads=torch.get_num_threads())

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    print(json.dumps(result), flush=True)


def run(roles: list[tuple[str, int]], base: str, seconds: float) -> list[dict]:
    """Start every (role, server threads) child at once; their rates."""
    procs = [subprocess.Popen([sys.executable, __file__, "--child", role, base, str(seconds), str(threads)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for role, threads in roles]
    found = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 600)
        if proc.returncode != 0:
            raise SystemExit(f"a {roles} child failed (exit {proc.returncode})")
        found.append(json.loads(out.strip().splitlines()[-1]))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase (default 60)")
    parser.add_argument("--server-threads", type=int, default=1,
                        help="the server's threads while the trainer trains (default 1, the setting's default)")
    parser.add_argument("--json", metavar="PATH", help="also write the headline figures as JSON to PATH")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, base, seconds, threads = args.child
        child(role, base, float(seconds), int(threads))
        return 0

    from honed.models.gguf_base import convert_gguf, smollm2_gguf

    before = load_average()
    base = str(convert_gguf(smollm2_gguf()))
    print(f"SmolLM2-135M-Instruct at {base}; load average {before}", flush=True)
    (train_alone,) = run([("train", 0)], base, args.seconds)
    (serve_alone,) = run([("serve", 0)], base, args.seconds)
    train_usual, serve_usual = run([("train", 0), ("serve", 0)], base, args.seconds)
    train_fewer, serve_fewer = run([("train", 0), ("serve", args.server_threads)], base, args.seconds)
    usual_threads = serve_usual["threads"]

    print(f"\nSmolLM2 on {usual_threads} torch threads per process; {args.seconds:g} s per phase")
    print(f"{'':44} {'training steps/s':>17} {'served tokens/s':>16}")
    print(f"{'the trainer alone':44} {train_alone['steps_per_s']:17.3f} {'':>16}")
    print(f"{'the server alone':44} {'':>17} {serve_alone['tokens_per_s']:16.2f}")
    fewer_threads = serve_fewer["threads"]
    baseline_label = f"side by side, server on {usual_threads} threads (baseline)"
    fewer_label = f"side by side, server on {fewer_threads} thread(s)"
    print(f"{baseline_label:44} {train_usual['steps_per_s']:17.3f} {serve_usual['tokens_per_s']:16.2f}")
    print(f"{fewer_label:44} {train_fewer['steps_per_s']:17.3f} {serve_fewer['tokens_per_s']:16.2f}")
    train_ratio = train_fewer["steps_per_s"] / train_usual["steps_per_s"]
    serve_ratio = serve_fewer["tokens_per_s"] / serve_usual["tokens_per_s"]
    print(f"server on {fewer_threads} thread(s) while training, against {usual_threads}: "
          f"training x{train_ratio:.2f}, serving x{serve_ratio:.2f}; load average {load_average()}")
    write_headline(args.json, "cpu_sharing", [
        figure("training steps/s beside a busy server on fewer threads", train_fewer["steps_per_s"], "steps/s",
               baseline=f"the server on its usual {usual_threads} threads", baseline_value=train_usual["steps_per_s"]),
        figure("served tokens/s beside a trainer, on fewer threads", serve_fewer["tokens_per_s"], "tokens/s",
               baseline=f"the server on its usual {usual_threads} threads", baseline_value=serve_usual["tokens_per_s"]),
    ], load_before=before, details={"alone": {"train": train_alone, "serve": serve_alone},
                                    "usual": {"train": train_usual, "serve": serve_usual},
                                    "fewer": {"train": train_fewer, "serve": serve_fewer}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
