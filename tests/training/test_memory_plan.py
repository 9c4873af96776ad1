"""The memory plan: the estimate of a step's memory against what a real step takes, and
the micro-batch it picks (a divisor of batch_size, so each step sees the same examples)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from honed.training.memory import (
    MARGIN,
    ModelShape,
    bytes_per_token,
    micro_batch_tokens,
    plan_micro_batch,
    sequence_lengths,
)


def test_the_largest_micro_batch_is_the_longest_examples_packed_as_the_trainer_packs_them():
    lengths = [[100], [400], [300], [50]]
    # The two longest do not share a row (rows are no longer than the longest example).
    assert micro_batch_tokens(lengths, 2, 512, pack=True, padded=False) == 2 * 400
    # The three longest: 400 | 300 + 100, two rows of 400.
    assert micro_batch_tokens(lengths, 3, 512, pack=True, padded=False) == 2 * 400
    assert micro_batch_tokens(lengths, 3, 512, pack=False, padded=False) == 3 * 400
    # Preference batches: every sequence its own row, padded to the longest.
    assert micro_batch_tokens([[10, 30], [20, 20]], 2, 512, pack=True, padded=True) == 4 * 30


def test_the_plan_keeps_the_examples_per_step_and_picks_the_largest_micro_batch_that_fits():
    lengths = [[100]] * 64
    per_token = 1000
    # At micro-batch 64 the 64 rows of 100 tokens need 6.4 MB; 16 need 1.6 MB.
    plan = plan_micro_batch(lengths, batch_size=64, grad_accum=2, max_len=100, pack=True, padded=False,
                            per_token=per_token, trainable=0, available=int(2.0e6 / MARGIN))
    assert (plan.batch_size, plan.grad_accum) == (16, 8) and plan.changed and plan.fits
    assert plan.configured == (64, 2) and plan.configured_bytes == 6_400_000 and plan.step_bytes == 1_600_000
    assert "training with 16 x 8" in plan.message() and "the same 128 examples per step" in plan.message()

    roomy = plan_micro_batch(lengths, batch_size=64, grad_accum=2, max_len=100, pack=True, padded=False,
                             per_token=per_token, trainable=0, available=10**9)
    assert not roomy.changed and (roomy.batch_size, roomy.grad_accum) == (64, 2)

    # batch_size 12 splits only into its divisors: 6, 4, 3, 2, 1.
    odd = plan_micro_batch([[100]] * 12, batch_size=12, grad_accum=1, max_len=100, pack=True, padded=False,
                           per_token=per_token, trainable=0, available=int(450_000 / MARGIN))
    assert (odd.batch_size, odd.grad_accum) == (4, 3)

    hopeless = plan_micro_batch(lengths, batch_size=4, grad_accum=1, max_len=100, pack=True, padded=False,
                                per_token=per_token, trainable=10**6, available=1000)
    assert (hopeless.batch_size, hopeless.grad_accum) == (1, 4) and not hopeless.fits
    assert "even micro-batch 1 may not fit" in hopeless.message()


def test_sequences_per_example_follow_the_objective():
    from honed.data.tokenization import Example
    from honed.training.preference import Completion, Judged, PreferencePair

    def completion(n):
        return Completion(input_ids=[1] * n, completion_mask=[1] * n, prompt_len=1)

    assert sequence_lengths(Example(input_ids=[1] * 7, targets=[1] * 7)) == [7]
    assert sequence_lengths(("hash", PreferencePair(completion(5), completion(9)))) == [5, 9]
    assert sequence_lengths(("hash", Judged(completion(6), True))) == [6, 6]  # and its KL pair


MEASURE = textwrap.dedent("""
    import json, random, sys
    import psutil, torch
    from honed.config import LoraSettings, TrainSettings
    from honed.data.packing import pack_batch
    from honed.data.tokenization import TokenizedRecords
    from honed.training.memory import ModelShape, bytes_per_token
    from honed.training.model_loading import load_tokenizer, load_training_model
    from honed.training.trainer import train_step

    base, size, chars = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    cfg = TrainSettings(batch_size=size)
    tokenizer = load_tokenizer(base)
    model = load_training_model(base, torch.device("cpu"), LoraSettings(), cfg)
    rng = random.Random(0)
    texts = ["".join(rng.choice("abcdefghij ") for _ in range(chars)) for _ in range(size)]
    records = [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": t[::-1]}]}
               for t in texts]
    examples = TokenizedRecords(tokenizer, records, cfg.max_seq_len, "train")
    batch = pack_batch(list(examples), cfg.max_seq_len, tokenizer.pad_token_id, cfg.pack)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    def peak_rss():  # VmHWM: the peak since the last reset
        line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    with open("/proc/self/clear_refs", "w") as f:  # the peak so far (loading the model) is not the step's
        f.write("5")
    before = psutil.Process().memory_info().rss
    train_step(model, optimizer, params, [batch], cfg, 1e-4)
    peak = peak_rss()
    estimate = batch.input_ids.numel() * bytes_per_token(ModelShape.of(model.config), checkpointing=False)
    print(json.dumps({"measured": peak - before, "estimate": estimate}))
""")


@pytest.mark.parametrize(("size", "chars"), [(8, 230), (32, 80)])
def test_the_estimate_covers_what_a_real_step_adds_without_doubling_it(tiny_random_base, size, chars):
    out = subprocess.run([sys.executable, "-c", MEASURE, str(tiny_random_base), str(size), str(chars)],
                         capture_output=True, text=True, timeout=300, check=True).stdout.splitlines()[-1]
    figures = json.loads(out)
    assert figures["measured"] > 0
    ratio = figures["estimate"] / figures["measured"]
    assert 0.85 <= ratio <= 2.0, figures  # measured 1.0-1.2 here; below 1 the margin still covers it


def test_the_shape_comes_from_the_model_config():
    from types import SimpleNamespace

    shape = ModelShape.of(SimpleNamespace(num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                                          vocab_size=49152))
    assert shape == ModelShape(30, 576, 1536, 49152)
    full = bytes_per_token(shape, checkpointing=False)
    assert bytes_per_token(shape, checkpointing=True) < full / 3  # the head's logits stay
