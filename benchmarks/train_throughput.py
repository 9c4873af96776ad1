"""Benchmark: LoRA training throughput of honed's trainer against HF Trainer (and TRL).

    python benchmarks/train_throughput.py [--model tiny|smollm2] [--steps N] [--quick] [--rounds R]
                                          [--only a,b] [--levers a,b|all] [--json PATH]

Builds the tiny model with random weights (``build_tiny_model(pretrain=False)``), or with
``--model smollm2`` takes SmolLM2-135M-Instruct (converted once from its GGUF), and a
variable-length synthetic chat data set in a temporary directory, then trains the SAME
model with the SAME LoRA adapter (r=16, alpha=32, all seven projections, dropout 0) on
the SAME tokenised examples (honed's ``tokenize_record``: identical input ids, loss on
assistant tokens only), the SAME effective batch (examples per optimizer step), learning
rate schedule and number of optimizer steps, with:

- ``honed recipe``: honed's full run path (``honed.training.oneshot.train_once`` on a
  temporary workspace: ingest, plan, store, metrics rows every step, final checkpoint),
  with eval_every=0 and checkpoint_every larger than the run;
- ``honed loop``: honed's components in a bare loop (``examples_for_step``,
  ``pack_batch``, ``train_step``), i.e. the same without the run machinery;
- ``HF Trainer``: ``transformers.Trainer`` + peft with a padding collator, fed the
  examples in honed's order (``train_sampling_strategy="sequential"``) so that every step
  sees the same examples as honed's;
- ``HF Trainer group_by_length``: the same with ``train_sampling_strategy=
  "group_by_length"`` (less padding; different examples per step, same examples per run);
- ``TRL SFTTrainer``: ``packing=True`` (best-fit decreasing into rows as long as the
  longest example, padding-free), gradient checkpointing and bf16 turned off, when trl is
  installed.

Each trainer runs in its own child process (so peak RSS is its own), one after another,
with the same torch thread count. The metric is real (non-pad) tokens per second through
forward + backward + optimizer step, timed over all steps after the first ``--warmup``.
MFU reads it against a matmul peak measured in the same run (``torch.mm`` GFLOP/s at the
model's shapes, the best of them), counting 4 N FLOPs per real token (N: the weights in
matrix multiplies; forward plus the backward pass's input gradients, as the frozen base
weights get none). With ``--model smollm2`` the goals are honed >= x1.3 the tokens/s of the
best of HF and TRL and <= x0.8 its peak RSS.

``--levers`` measures, each in its own process against honed's loop in the same run, one
change to that loop (threads, activation checkpointing, bf16 autocast, ``torch.compile``,
packing, the head on every position; :data:`LEVERS`): which of them pays on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import honed  # noqa: F401
except ImportError:  # run from a checkout without an editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from headline import cpu_busy_seconds, figure, load_average, write_headline  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TRAINERS = ("honed-run", "honed-loop", "hf", "hf-group", "trl")
LABELS = {
    "honed-run": "honed recipe",
    "honed-loop": "honed loop",
    "hf": "HF Trainer (padded)",
    "hf-group": "HF Trainer group_by_length",
    "trl": "TRL SFTTrainer packing",
}
# Levers, each honed's bare loop with one thing changed, against the loop as it is in the
# same run (--levers): which of them honed should adopt.
LEVERS = {
    "threads-1": "1 torch thread instead of --threads",
    "checkpointing": "activation checkpointing per decoder layer (train.gradient_checkpointing)",
    "bf16": "torch.autocast(cpu, bfloat16) around forward and backward",
    "compile": "torch.compile(dynamic=True) on every decoder layer (train.compile; inductor, C++ on the CPU)",
    "unpacked": "one example per row, padded (train.pack = false), instead of packed rows with a "
                "block-diagonal SDPA mask",
    "whole-logits": "the head at every position, the (tokens x vocabulary) logits whole, instead of "
                    "only where a token is scored",
}
LR = {"tiny": 3e-3, "smollm2": 3e-4}  # a pretrained model takes a smaller step
WARMUP_STEPS = {"tiny": 5, "smollm2": 2}
MAX_SEQ_LEN = 512
SEED = 0


# --- data ----------------------------------------------------------------------------------


def _paragraph(rng: random.Random, min_chars: int, max_chars: int) -> str:
    target = rng.randint(min_chars, max_chars)
    words: list[str] = []
    length = -1
    while length < target:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:target].rstrip()


def make_records(n: int, seed: int = SEED) -> list[dict]:
    """``n`` distinct records: the short synthetic families plus long chats and texts.

    About half are honed.data.synthetic families (20-40 tokens each), a third are chats
    whose user turn holds a 10-300 character paragraph with a short answer, the rest are
    plain-text records of 40-400 characters, so lengths spread from ~20 to ~400 tokens.
    """
    from honed.data.synthetic import FAMILIES, generate

    rng = random.Random(seed)
    n_family = n // 2
    n_long = n // 3
    n_text = n - n_family - n_long
    families = sorted(FAMILIES)
    records: list[dict] = []
    for k, family in enumerate(families):
        count = n_family // len(families) + (1 if k < n_family % len(families) else 0)
        records.extend(generate(family, count, seed=seed))
    for _ in range(n_long):
        text = _paragraph(rng, 10, 300)
        words = text.split()
        kind = rng.randrange(3)
        if kind == 0:
            prompt, answer = f"first word: {text}", words[0]
        elif kind == 1:
            prompt, answer = f"last word: {text}", words[-1]
        else:
            prompt, answer = f"how many words: {text}", str(len(words))
        records.append({"messages": [{"role": "user", "content": prompt},
                                     {"role": "assistant", "content": answer}]})
    for _ in range(n_text):
        records.append({"text": _paragraph(rng, 40, 400)})
    rng.shuffle(records)
    return records


def load_examples(spec: dict):
    """The normalised records, tokenised by honed, and the tokenizer."""
    from honed.data.plan import read_jsonl
    from honed.data.tokenization import tokenize_record
    from honed.training.model_loading import load_tokenizer

    tokenizer = load_tokenizer(spec["base"])
    records = list(read_jsonl(Path(spec["normalized"])))
    return tokenizer, [tokenize_record(tokenizer, r, MAX_SEQ_LEN) for r in records]


def train_settings(spec: dict):
    from honed.config import TrainSettings

    return TrainSettings(
        batch_size=spec["batch"], grad_accum=1, max_steps=spec["steps"], epochs=1.0, lr=spec["lr"],
        warmup_steps=spec["warmup_steps"], schedule="cosine", max_seq_len=MAX_SEQ_LEN, seed=SEED,
        heldout_fraction=0.0, eval_every=0, checkpoint_every=10**6, threads=spec["threads"],
    )


def step_order(n_examples: int, spec: dict) -> list[list[int]]:
    """Indices of the examples of every optimizer step, in honed's order."""
    from honed.training.trainer import examples_for_step

    cfg = train_settings(spec)
    return [examples_for_step(s, n_examples, cfg)[0] for s in range(spec["steps"])]


def hf_labels(example) -> list[int]:
    """Unshifted labels (HF shifts inside the model): labels[i + 1] = targets[i]."""
    from honed.data.tokenization import IGNORE

    return [IGNORE, *example.targets[:-1]]


# --- children ---------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _result(spec: dict, ends: list[float], tokens: list[int], losses: list[float], note: str = "") -> dict:
    k = spec["warmup"]
    n = len(ends)
    seconds = ends[-1] - ends[k - 1]
    timed_tokens = sum(tokens[k:])
    tail = losses[-5:]
    return {
        "steps": n, "timed_steps": n - k, "seconds": seconds, "tokens": timed_tokens,
        "tokens_per_s": timed_tokens / seconds if seconds > 0 else 0.0,
        "final_loss": sum(tail) / len(tail), "first_loss": losses[0], "peak_rss_mb": _peak_rss_mb(),
        "note": note,
    }


def child_honed_run(spec: dict) -> dict:
    """honed's full one-shot path on a temporary workspace."""
    from honed.data.plan import read_jsonl
    from honed.training.oneshot import train_once
    from honed.workspace import init_workspace, open_workspace

    root = Path(tempfile.mkdtemp(dir=spec["tmp"], prefix="ws-honed-"))
    init_workspace(root, base=spec["base"])
    cfg = train_settings(spec)
    keys = ("batch_size", "grad_accum", "max_steps", "epochs", "lr", "warmup_steps", "schedule",
            "max_seq_len", "seed", "heldout_fraction", "eval_every", "checkpoint_every", "threads")
    overrides = {"train": {k: v for k, v in cfg.model_dump().items() if k in keys}}
    ws = open_workspace(root, overrides)
    store = ws.open_store()
    ends: list[float] = []
    tokens: list[int] = []
    losses: list[float] = []

    def on_step(row: dict) -> None:
        ends.append(time.perf_counter())
        tokens.append(row["tokens"])
        losses.append(row["loss"])

    try:
        summary = train_once(ws, store, datasets=[spec["raw"]], eval_file=None, base_version=None,
                             resume=None, out=None, track="main", on_step=on_step)
    finally:
        store.close()
    if summary["status"] != "succeeded":
        raise RuntimeError(f"honed run ended {summary['status']}: {summary.get('error')}")
    planned = [r["hash"] for r in read_jsonl(ws.runs_dir / summary["run"] / "train.jsonl")]
    expected = [r["hash"] for r in read_jsonl(Path(spec["normalized"]))]
    if planned != expected:
        raise RuntimeError("honed's plan holds other records than the benchmark's: not comparable")
    return _result(spec, ends, tokens, losses, "oneshot.train_once -> recipe.run_attempt_of")


def child_honed_loop(spec: dict, lever: str | None = None) -> dict:
    """honed's components in a bare loop: what the recipe does, minus the run machinery;
    with ``lever``, one thing changed (:data:`LEVERS`)."""
    from contextlib import nullcontext

    import torch

    from honed.config import LoraSettings
    from honed.data.packing import pack_batch
    from honed.training import trainer
    from honed.training.model_loading import attach_lora, compile_layers, enable_checkpointing, load_base_model
    from honed.training.trainer import examples_for_step, learning_rate, train_step

    torch.set_num_threads(1 if lever == "threads-1" else spec["threads"])
    tokenizer, examples = load_examples(spec)
    cfg = train_settings(spec)
    if lever == "unpacked":
        cfg = cfg.model_copy(update={"pack": False})
    if lever == "whole-logits":
        trainer._decoder_and_head = lambda _model: None
    torch.manual_seed(SEED)
    base = load_base_model(spec["base"], torch.device("cpu"))
    if lever == "checkpointing":
        enable_checkpointing(base)
    if lever == "compile":
        compile_layers(base)  # train.compile
    model = attach_lora(base, LoraSettings(), SEED)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ends, tokens, losses = [], [], []
    for step in range(spec["steps"]):
        micro = examples_for_step(step, len(examples), cfg)
        batches = [pack_batch([examples[i] for i in mb], cfg.max_seq_len, tokenizer.pad_token_id, cfg.pack)
                   for mb in micro]
        with torch.autocast("cpu", dtype=torch.bfloat16) if lever == "bf16" else nullcontext():
            out = train_step(model, optimizer, params, batches, cfg, learning_rate(step, spec["steps"], cfg, 1.0))
        ends.append(time.perf_counter())
        tokens.append(out["tokens"])
        losses.append(out["loss"])
    return _result(spec, ends, tokens, losses, LEVERS[lever] if lever else
                   "examples_for_step + pack_batch + train_step")


def _hf_common(spec: dict):
    import torch

    from honed.config import LoraSettings
    from honed.training.model_loading import attach_lora, load_base_model

    torch.set_num_threads(spec["threads"])
    tokenizer, examples = load_examples(spec)
    torch.manual_seed(SEED)
    model = attach_lora(load_base_model(spec["base"], torch.device("cpu")), LoraSettings(), SEED)
    return tokenizer, examples, model


def _recording_trainer(base_class, spec: dict, pad_id: int):
    """``base_class`` with honed's exact lr schedule and a per-step record of real tokens,
    loss and end time (tokens are counted on the batches the loss is computed on)."""
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import TrainerCallback

    from honed.training.trainer import learning_rate

    cfg = train_settings(spec)
    record = {"ends": [], "tokens": [], "losses": [], "pending_tokens": 0, "pending_loss": 0.0}

    class Recorder(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            record["ends"].append(time.perf_counter())
            record["tokens"].append(record["pending_tokens"])
            record["losses"].append(record["pending_loss"])
            record["pending_tokens"], record["pending_loss"] = 0, 0.0

    class Recording(base_class):
        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                self.lr_scheduler = LambdaLR(
                    optimizer if optimizer is not None else self.optimizer,
                    lambda s: learning_rate(s, num_training_steps, cfg, 1.0) / cfg.lr,
                )
            return self.lr_scheduler

        def compute_loss(self, model, inputs, *a, **kw):
            record["pending_tokens"] += int((inputs["input_ids"] != pad_id).sum())
            out = super().compute_loss(model, inputs, *a, **kw)
            loss = out[0] if isinstance(out, tuple) else out
            record["pending_loss"] += float(loss.detach())
            return out

    return Recording, Recorder, record


def _training_args(cls, spec: dict, out: str, **extra):
    return cls(
        output_dir=out, max_steps=spec["steps"], per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=1, learning_rate=spec["lr"], weight_decay=0.0, warmup_steps=spec["warmup_steps"],
        lr_scheduler_type="cosine", max_grad_norm=1.0, seed=SEED, data_seed=SEED,
        logging_steps=10**6, save_strategy="no", eval_strategy="no", report_to=[],
        dataloader_num_workers=0, remove_unused_columns=False, label_names=["labels"], use_cpu=True,
        disable_tqdm=True, **extra,
    )


def child_hf(spec: dict, strategy: str = "sequential") -> dict:
    """transformers.Trainer + peft with a padding collator (right padding, labels -100)."""
    import torch
    from transformers import Trainer, TrainingArguments

    from honed.data.tokenization import IGNORE

    tokenizer, examples, model = _hf_common(spec)
    pad_id = tokenizer.pad_token_id
    order = [i for step in step_order(len(examples), spec) for i in step]
    data = [{"input_ids": examples[i].input_ids, "labels": hf_labels(examples[i])} for i in order]

    def collate(features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for r, f in enumerate(features):
            k = len(f["input_ids"])
            ids[r, :k] = torch.tensor(f["input_ids"])
            labels[r, :k] = torch.tensor(f["labels"])
            mask[r, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    trainer_cls, recorder, record = _recording_trainer(Trainer, spec, pad_id)
    args = _training_args(TrainingArguments, spec, str(Path(spec["tmp"]) / f"hf-{strategy}"),
                          train_sampling_strategy=strategy)
    trainer = trainer_cls(model=model, args=args, train_dataset=data, data_collator=collate,
                          callbacks=[recorder()])
    trainer.train()
    note = f"padding collator, train_sampling_strategy={strategy}, optim={args.optim}"
    return _result(spec, record["ends"], record["tokens"], record["losses"], note)


def child_trl(spec: dict) -> dict:
    """TRL's SFTTrainer with packing (BFD, padding-free) on the same tokenised examples."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer, examples, model = _hf_common(spec)
    pad_id = tokenizer.pad_token_id
    order = [i for step in step_order(len(examples), spec) for i in step]
    data = Dataset.from_list([{"input_ids": examples[i].input_ids, "labels": hf_labels(examples[i])}
                              for i in order])
    longest = max(len(e.input_ids) for e in examples)
    # TRL packs the whole data set up front into rows of max_length tokens; choose the
    # rows per step so that a step holds about `batch` examples, as in the others.
    from trl.data_utils import pack_dataset

    rows = len(pack_dataset(data, seq_length=longest, strategy="bfd"))
    per_step = max(1, round(spec["batch"] * rows / len(data)))
    trainer_cls, recorder, record = _recording_trainer(SFTTrainer, spec, pad_id)
    args = _training_args(
        SFTConfig, {**spec, "batch": per_step}, str(Path(spec["tmp"]) / "trl"),
        packing=True, packing_strategy="bfd", max_length=longest, gradient_checkpointing=False,
        bf16=False, dataset_num_proc=None,
    )
    trainer = trainer_cls(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                          callbacks=[recorder()])
    trainer.train()
    note = (f"packing=bfd into {rows} rows of {longest} tokens, {per_step} rows/step "
            f"(~{per_step * len(data) / rows:.0f} examples/step), padding-free")
    return _result(spec, record["ends"], record["tokens"], record["losses"], note)


def child_main(which: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    from honed.training.model_loading import quiet_libraries

    quiet_libraries()
    import torch

    torch.set_num_threads(spec["threads"])
    fn = (lambda s: child_honed_loop(s, which.removeprefix("lever:"))) if which.startswith("lever:") else {
        "honed-run": child_honed_run,
        "honed-loop": child_honed_loop,
        "hf": child_hf,
        "hf-group": lambda s: child_hf(s, "group_by_length"),
        "trl": child_trl,
    }[which]
    result = fn(spec)
    result["threads"] = torch.get_num_threads()
    Path(spec["tmp"], f"result-{which}.json").write_text(json.dumps(result))


# --- parent ----------------------------------------------------------------------------------


def describe_data(spec: dict) -> dict:
    """Token lengths, and the share of padding in padded / honed-packed batches."""
    from honed.data.packing import assign_rows

    _, examples = load_examples(spec)
    lengths = [len(e.input_ids) for e in examples]
    real = padded = packed = 0
    for step in step_order(len(examples), spec):
        lens = [lengths[i] for i in step]
        real += sum(lens)
        padded += len(lens) * max(lens)
        rows = assign_rows(lens, MAX_SEQ_LEN, True)
        packed += len(rows) * max(sum(lens[i] for i in row) for row in rows)
    return {
        "n": len(lengths), "min": min(lengths), "median": statistics.median(lengths),
        "mean": statistics.fmean(lengths), "max": max(lengths),
        "pad_share_padded": 1 - real / padded, "pad_share_packed": 1 - real / packed,
    }


def run_child(which: str, spec_path: Path, tmp_path: Path) -> dict:
    """Run one trainer in a fresh process; its result plus the CPU share others took meanwhile."""
    out = tmp_path / f"result-{which}.json"
    out.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, t0 = cpu_busy_seconds(), time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", which, str(spec_path)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    busy = cpu_busy_seconds() - busy
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0 or not out.exists():
        return {"error": [f"exit {proc.returncode}", *(proc.stderr or proc.stdout).strip().splitlines()[-6:]]}
    result = json.loads(out.read_text())
    result["wall"] = wall
    result["others_cpu"] = max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))
    return result


def matmul_flops_per_token(base: str) -> float:
    """Multiply-add FLOPs of one real token through LoRA training: the forward pass (2 N)
    and the backward pass's input gradients (2 N), N being the weights that take part in
    a matrix multiply (the projections of every layer and the head); the frozen weights
    get no gradient, attention's score products and LoRA's own are left out (small)."""
    config = json.loads((Path(base) / "config.json").read_text())
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    q = config["num_attention_heads"] * head_dim
    kv = config.get("num_key_value_heads", config["num_attention_heads"]) * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter
    return 4.0 * (layers * per_layer + h * config["vocab_size"])


def matmul_peak(base: str, threads: int, tokens: int = 2048) -> dict:
    """torch.mm GFLOP/s on this CPU at the model's shapes (``tokens`` rows through each
    projection and the head), measured now: the best of them is the peak MFU is read
    against."""
    import torch
    import torch.nn.functional as F

    config = json.loads((Path(base) / "config.json").read_text())
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    torch.set_num_threads(threads)
    shapes = {"up/gate": (h, inter), "down": (inter, h), "q/o": (h, h), "head": (h, vocab)}
    rates = {}
    with torch.inference_mode():
        for name, (k, n) in shapes.items():
            x, w = torch.randn(tokens, k), torch.randn(n, k)
            F.linear(x, w)
            repeats, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < 0.5 or repeats < 3:
                F.linear(x, w)
                repeats += 1
            rates[name] = 2 * tokens * k * n * repeats / elapsed / 1e9
    return {"gflops": max(rates.values()), "by_shape": rates, "tokens": tokens}


def load_snapshot() -> str:
    load1, load5, _ = os.getloadavg()
    return f"load average {load1:.2f} (1 min), {load5:.2f} (5 min) on {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny",
                        help="tiny: honed's tiny model, random weights; smollm2: SmolLM2-135M-Instruct")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per trainer (default 60, --quick 25; smollm2 12, --quick 6)")
    parser.add_argument("--quick", action="store_true", help="fewer steps, skip the extra variants")
    parser.add_argument("--batch", type=int, default=None, help="examples per optimizer step (default 32; smollm2 16)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every trainer (default 2)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out of the timing (default 3; smollm2 2)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every trainer this many times, interleaved, and keep each one's best")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(TRAINERS)}")
    parser.add_argument("--levers", default="", help="comma-separated levers, or 'all', each measured against honed's "
                        f"loop in the same run (alone, unless --only adds trainers): {', '.join(LEVERS)}")
    parser.add_argument("--json", metavar="PATH", help="also write the headline figures as JSON to PATH")
    parser.add_argument("--child", nargs=2, metavar=("TRAINER", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(*args.child)
        return 0

    real = args.model == "smollm2"
    steps = args.steps or ((6 if args.quick else 12) if real else (25 if args.quick else 60))
    args.batch = args.batch or (16 if real else 32)
    args.warmup = args.warmup if args.warmup is not None else (2 if real else 3)
    if not 1 <= args.warmup < steps:
        parser.error(f"need 1 <= --warmup < --steps (got {args.warmup}, {steps})")
    levers = list(LEVERS) if args.levers == "all" else [t.strip() for t in args.levers.split(",") if t.strip()]
    if set(levers) - set(LEVERS):
        parser.error(f"--levers: unknown {sorted(set(levers) - set(LEVERS))}; choose from {', '.join(LEVERS)}")
    trainers = [t.strip() for t in args.only.split(",") if t.strip()] or (
        ["honed-loop"] if levers else ["honed-run", "hf", "trl"] if args.quick else list(TRAINERS))
    unknown = set(trainers) - set(TRAINERS)
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; choose from {', '.join(TRAINERS)}")
    if levers and "honed-loop" not in trainers:
        trainers.insert(0, "honed-loop")  # what every lever is measured against
    trainers += [f"lever:{name}" for name in levers]
    LABELS.update({f"lever:{name}": f"lever {name}" for name in levers})

    from honed.data.ingest import ingest_file
    from honed.models.tiny import build_tiny_model
    from honed.training.model_loading import quiet_libraries

    quiet_libraries()
    started = time.perf_counter()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="honed-bench-train-") as tmp:
        tmp_path = Path(tmp)
        if real:
            from honed.models.gguf_base import convert_gguf, smollm2_gguf

            base = convert_gguf(smollm2_gguf())
        else:
            base = build_tiny_model(tmp_path / "base", pretrain=False)
        raw = tmp_path / "data" / "chat.jsonl"
        raw.parent.mkdir()
        with open(raw, "w", encoding="utf-8") as fh:
            for record in make_records(steps * args.batch):
                fh.write(json.dumps(record) + "\n")
        ingested = ingest_file(raw, tmp_path / "normalized", mode="strict")
        spec = {
            "tmp": tmp, "base": str(base), "raw": str(raw), "normalized": str(ingested.normalized_path),
            "steps": steps, "batch": args.batch, "threads": args.threads, "warmup": args.warmup,
            "lr": LR[args.model], "warmup_steps": WARMUP_STEPS[args.model],
        }
        spec_path = tmp_path / "spec.json"
        spec_path.write_text(json.dumps(spec))
        data = describe_data(spec)
        print(f"data: {data['n']} examples, tokens min {data['min']} / median {data['median']:.0f} / "
              f"mean {data['mean']:.0f} / max {data['max']}; padding share {data['pad_share_padded']:.0%} "
              f"when padded per batch, {data['pad_share_packed']:.0%} when packed by honed")
        print(f"setup: {steps} optimizer steps of {args.batch} examples, LoRA r=16 alpha=32 on 7 "
              f"projections, lr {spec['lr']} cosine, warm-up {spec['warmup_steps']}, {args.threads} torch threads; "
              f"first {args.warmup} steps untimed")
        print(f"before: {load_snapshot()}")
        peak = matmul_peak(str(base), args.threads)
        flops_per_token = matmul_flops_per_token(str(base))
        print(f"matmul peak: {peak['gflops']:.1f} GFLOP/s with {args.threads} threads (torch.mm, {peak['tokens']} "
              "rows at the model's shapes: " + ", ".join(f"{k} {v:.0f}" for k, v in peak["by_shape"].items())
              + f"); {flops_per_token / 1e6:.0f} MFLOP per real token trained (forward + input gradients)")
        busy, t0 = cpu_busy_seconds(), time.perf_counter()
        time.sleep(1.0)
        others = (cpu_busy_seconds() - busy) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))
        if others > 0.1:
            print(f"WARNING: other processes are using {others:.0%} of the CPUs; with every core in use, "
                  "figures can drop several-fold. Watch the 'others CPU' column and re-run when quiet.")
        try:
            import trl  # noqa: F401
        except ImportError:
            if "trl" in trainers:
                print("TRL SFTTrainer: skipped (trl is not installed; `pip install trl`)")
                trainers.remove("trl")
        results: dict[str, dict] = {}
        for round_no in range(1, args.rounds + 1):
            for which in trainers:
                r = run_child(which, spec_path, tmp_path)
                if "error" in r:
                    print(f"  {LABELS[which]}: FAILED\n    " + "\n    ".join(r["error"]))
                    continue
                print(f"  [{round_no}] {LABELS[which]}: {r['tokens_per_s']:,.0f} real tokens/s, loss "
                      f"{r['first_loss']:.3f} -> {r['final_loss']:.3f}, others used {r['others_cpu']:.0%} "
                      f"of the CPUs meanwhile ({r['wall']:.0f} s wall; {r['note']})", flush=True)
                if which not in results or r["tokens_per_s"] > results[which]["tokens_per_s"]:
                    results[which] = r
        print(f"after: {load_snapshot()}")

    ref = results.get("hf", {}).get("tokens_per_s")
    header = (f"{'trainer':<28} {'steps':>5} {'seconds':>8} {'real tokens/s':>14} {'peak RSS MB':>12} "
              f"{'vs HF Trainer':>14} {'MFU':>6} {'others CPU':>11}")
    print()
    print(header)
    print("-" * len(header))
    for which in [*TRAINERS, *(f"lever:{name}" for name in levers)]:
        if which not in results:
            continue
        r = results[which]
        ratio = f"x{r['tokens_per_s'] / ref:.2f}" if ref else "n/a"
        r["mfu"] = r["tokens_per_s"] * flops_per_token / (peak["gflops"] * 1e9)
        print(f"{LABELS[which]:<28} {r['timed_steps']:>5} {r['seconds']:>8.1f} {r['tokens_per_s']:>14,.0f} "
              f"{r['peak_rss_mb']:>12.0f} {ratio:>14} {r['mfu']:>6.1%} {r['others_cpu']:>11.0%}")
    best = " (best of each trainer's rounds)" if args.rounds > 1 else ""
    print(f"MFU = real tokens/s x {flops_per_token / 1e6:.0f} MFLOP / the matmul peak measured above")
    print(f"steps = timed steps, after {args.warmup} untimed; others CPU = share of the machine's CPU time "
          f"used by other processes during that trainer's run{best}; total {time.perf_counter() - started:.0f} s")
    if any(r["others_cpu"] > 0.1 for r in results.values()):
        print("WARNING: other processes used more than 10% of the CPUs during some runs; those figures are low.")

    status = 0
    honed_key = "honed-run" if "honed-run" in results else "honed-loop" if "honed-loop" in results else None
    figures = []
    others = [w for w in ("hf", "hf-group", "trl") if w in results]
    if real and honed_key and others:
        best = max(others, key=lambda w: results[w]["tokens_per_s"])
        speed = results[honed_key]["tokens_per_s"] / results[best]["tokens_per_s"]
        memory = results[honed_key]["peak_rss_mb"] / results[best]["peak_rss_mb"]
        print(f"goal: {LABELS[honed_key]} x{speed:.2f} the tokens/s of the best of HF/TRL ({LABELS[best]}; goal "
              f">= x1.3: {'met' if speed >= 1.3 else 'NOT MET'}), x{memory:.2f} its peak RSS (goal <= x0.8: "
              f"{'met' if memory <= 0.8 else 'NOT MET'})")
        figures.append(figure(f"SmolLM2: {LABELS[honed_key]} real tokens/s", results[honed_key]["tokens_per_s"],
                              "tok/s", baseline=LABELS[best], baseline_value=results[best]["tokens_per_s"],
                              goal=">= x1.3", met=speed >= 1.3))
        figures.append(figure(f"SmolLM2: {LABELS[honed_key]} peak RSS", results[honed_key]["peak_rss_mb"], "MB",
                              baseline=LABELS[best], baseline_value=results[best]["peak_rss_mb"], goal="<= x0.8",
                              met=memory <= 0.8))
    elif honed_key and ref:
        ratio = results[honed_key]["tokens_per_s"] / ref
        verdict = "meets" if ratio >= 1.5 else "MISSES"
        print(f"goal: {LABELS[honed_key]} x{ratio:.2f} of HF Trainer ({verdict} the x1.5 goal)")
        figures.append(figure(f"{LABELS[honed_key]} real tokens/s", results[honed_key]["tokens_per_s"], "tok/s",
                              baseline=LABELS["hf"], baseline_value=ref, goal=">= x1.5", met=ratio >= 1.5))
    if levers and "honed-loop" in results:
        loop = results["honed-loop"]
        print(f"\nlevers, each against {LABELS['honed-loop']} in this run ({loop['tokens_per_s']:,.0f} tokens/s, "
              f"{loop['peak_rss_mb']:,.0f} MB, final loss {loop['final_loss']:.4f}):")
        for name in levers:
            r = results.get(f"lever:{name}")
            if r is None:
                print(f"  {name:<14} failed (above)")
                continue
            r["speed_vs_loop"] = r["tokens_per_s"] / loop["tokens_per_s"]
            r["memory_vs_loop"] = r["peak_rss_mb"] / loop["peak_rss_mb"]
            print(f"  {name:<14} x{r['speed_vs_loop']:.2f} tokens/s, x{r['memory_vs_loop']:.2f} peak RSS, final loss "
                  f"{r['final_loss']:.4f} ({LEVERS[name]})")
            figures.append(figure(f"lever {name}: real tokens/s", r["tokens_per_s"], "tok/s",
                                  baseline=LABELS["honed-loop"], baseline_value=loop["tokens_per_s"]))
    # Sanity: everyone really trains (a random model on random letters learns slowly, so
    # the bar is low), and trainers that see the same examples in the same order end in
    # the same place.
    for which, r in results.items():
        if not r["final_loss"] < r["first_loss"] * 0.95:
            print(f"SANITY FAILED: {LABELS[which]} did not train (loss {r['first_loss']:.3f} -> {r['final_loss']:.3f})")
            status = 1
    if honed_key and "hf" in results:
        a, b = results[honed_key]["final_loss"], results["hf"]["final_loss"]
        close = abs(a - b) <= 0.05 * max(a, b)
        print(f"final loss (mean of last 5 steps): {LABELS[honed_key]} {a:.4f}, HF Trainer {b:.4f} "
              f"({'same ballpark' if close else 'DIFFERENT'}; same examples, order and lr schedule)")
        status = status or (0 if close else 1)
    write_headline(args.json, "train_throughput", figures, load_before=load_before, details={
        "model": args.model, "steps": steps, "batch": args.batch, "threads": args.threads, "rounds": args.rounds,
        "sanity_ok": status == 0, "matmul_peak_gflops": peak["gflops"], "mflop_per_token": flops_per_token / 1e6,
        "trainers": {LABELS[w]: {k: r.get(k) for k in ("tokens_per_s", "peak_rss_mb", "others_cpu", "final_loss",
                                                       "mfu")}
                     for w, r in results.items()},
    })
    return status


if __name__ == "__main__":
    sys.exit(main())
