"""How much memory a training step needs, and the micro-batch that fits.

Before an attempt trains, the recipe estimates the peak of its largest micro-batch and,
when that would not fit what the device has left, splits ``train.batch_size`` into
smaller micro-batches with more accumulation: the same examples per optimizer step, so
the same loss curve (the step's loss is a sum over its examples, whatever the split).

The weights, the tokenizer and the runtime are loaded already when the plan is made, so
they are measured (they are what the device has used), not estimated. What is estimated
is what a step adds: the activations kept for the backward pass, per token of the padded
micro-batch, and the LoRA weights' gradients and AdamW moments.

Per token, a decoder layer with LoRA on its linear modules keeps about ``28 x hidden +
8 x intermediate`` values (norms' inputs and outputs, q/k/v/o, the MLP's gate, up and
product, LoRA's inputs); the head keeps the logits, their log-softmax and their gradient
(``4 x vocab``). Measured on a 2-core EPYC (PyTorch's flash attention, fp32, one step of
honed's own loop, the peak RSS it adds): the formula's figure is 1.05 times what the step
took on the tiny base and 1.2 to 1.3 times on SmolLM2-135M, so it errs on the side of a
smaller micro-batch (``tests/training/test_memory_plan.py`` keeps it within 0.85-2x).
With activation checkpointing only each layer's input is kept, plus one layer's
activations while it is recomputed. The head's ``4 x vocab`` is what the preference
objectives keep; supervised steps on the architectures whose head honed applies only at
the scored positions (``honed.training.trainer.batch_loss_sum``) keep far less, so for
them the estimate errs further on the side of a smaller micro-batch.
"""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

PER_LAYER_HIDDEN = 28  # values kept per token and layer, per unit of hidden size
PER_LAYER_INTERMEDIATE = 8  # ... per unit of the MLP's intermediate size
PER_VOCAB = 4  # logits, their float copy or log-softmax, and their gradient
MARGIN = 0.85  # a plan fills at most this share of what is available
PER_TRAINABLE = 16  # bytes per LoRA parameter added by a step: gradient, two AdamW moments, a spare


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a decoder's configuration."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        hidden = int(config.hidden_size)
        return cls(int(config.num_hidden_layers), hidden, int(getattr(config, "intermediate_size", 4 * hidden)),
                   int(config.vocab_size))


def bytes_per_token(shape: ModelShape, *, checkpointing: bool, value_bytes: int = 4) -> int:
    """Activation bytes the backward pass keeps per token of a micro-batch."""
    layer = PER_LAYER_HIDDEN * shape.hidden + PER_LAYER_INTERMEDIATE * shape.intermediate
    kept = shape.layers * shape.hidden + layer if checkpointing else shape.layers * layer
    return kept * value_bytes + PER_VOCAB * shape.vocab * 4  # the loss is taken in float32


def sequence_lengths(item: Any) -> list[int]:
    """The token sequences one training example puts through the model: one for SFT,
    chosen and rejected for DPO, the completion and its mismatched KL pair for KTO."""
    if hasattr(item, "input_ids"):
        return [len(item.input_ids)]
    example = item[1] if isinstance(item, tuple) else item
    if hasattr(example, "chosen"):
        return [len(example.chosen.input_ids), len(example.rejected.input_ids)]
    return [len(example.completion.input_ids)] * 2


def micro_batch_tokens(lengths: Sequence[Sequence[int]], size: int, max_len: int, *, pack: bool,
                       padded: bool) -> int:
    """Padded tokens of the largest micro-batch of ``size`` examples: the ``size`` longest,
    packed into rows as :func:`~honed.data.packing.pack_batch` does (``padded``: every
    sequence its own row, right-padded to the longest, as preference batches are)."""
    from honed.data.packing import assign_rows

    longest = sorted(lengths, key=sum, reverse=True)[:size]
    sequences = [n for example in longest for n in example]
    if not sequences:
        return 0
    if padded:
        return len(sequences) * max(sequences)
    rows = assign_rows(sequences, max_len, pack)
    return len(rows) * max(sum(sequences[i] for i in row) for row in rows)


@dataclass(frozen=True)
class MemoryPlan:
    """The micro-batch an attempt trains with, and the figures it was chosen by."""

    batch_size: int
    grad_accum: int
    configured: tuple[int, int]  # batch_size, grad_accum as the settings had them
    step_bytes: int  # estimated at the chosen micro-batch
    configured_bytes: int  # estimated at the configured one
    available_bytes: int
    tokens: int  # padded tokens of the largest micro-batch at the chosen size

    @property
    def changed(self) -> bool:
        return (self.batch_size, self.grad_accum) != self.configured

    @property
    def fits(self) -> bool:
        return self.step_bytes <= MARGIN * self.available_bytes

    def data(self) -> dict[str, Any]:
        return {**asdict(self), "configured": list(self.configured)}

    def message(self) -> str:
        size, accum = self.configured
        mib = 2**20
        if not self.changed:
            return (f"memory: a step at micro-batch {size} x {accum} needs about {self.step_bytes / mib:.0f} MiB "
                    f"of the {self.available_bytes / mib:.0f} MiB available")
        if not self.fits:
            return (f"memory: even micro-batch {self.batch_size} may not fit (about {self.step_bytes / mib:.0f} "
                    f"MiB of the {self.available_bytes / mib:.0f} MiB available); trying it (lower "
                    "train.max_seq_len, or set train.gradient_checkpointing = true)")
        return (f"memory: micro-batch {size} x {accum} would need about {self.configured_bytes / mib:.0f} MiB of "
                f"the {self.available_bytes / mib:.0f} MiB available; training with {self.batch_size} x "
                f"{self.grad_accum} (about {self.step_bytes / mib:.0f} MiB), the same {size * accum} examples "
                "per step")


def plan_micro_batch(lengths: Sequence[Sequence[int]], *, batch_size: int, grad_accum: int, max_len: int,
                     pack: bool, padded: bool, per_token: int, trainable: int, available: int) -> MemoryPlan:
    """The largest micro-batch (a divisor of ``batch_size``, so the examples per step stay
    the same) whose step fits ``MARGIN`` of ``available`` bytes; 1 when none does."""

    def need(size: int) -> tuple[int, int]:
        tokens = micro_batch_tokens(lengths, size, max_len, pack=pack, padded=padded)
        return tokens * per_token + trainable * PER_TRAINABLE, tokens

    configured, _ = need(batch_size)
    for size in sorted((d for d in range(1, batch_size + 1) if batch_size % d == 0), reverse=True):
        step, tokens = need(size)
        if step <= MARGIN * available or size == 1:
            return MemoryPlan(size, grad_accum * (batch_size // size), (batch_size, grad_accum), step, configured,
                              available, tokens)
    raise AssertionError("unreachable: size 1 always returns")


def available_bytes(device: Any) -> int:
    """What this process may still allocate on ``device``: CUDA's free memory, or on the CPU
    the host's available memory (shared among this node's trainer processes), capped by
    the process's own data limit (``daemon.trainer_memory_mb`` sets RLIMIT_DATA)."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil  # type: ignore[import-untyped]

    free = psutil.virtual_memory().available // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    if soft != resource.RLIM_INFINITY:
        free = min(free, soft - psutil.Process().memory_info().data)
    return max(0, int(free))


def longest_examples(examples: Sequence[Any], records: Sequence[dict], count: int) -> list[Any]:
    """The ``count`` examples most likely the longest in tokens, without tokenising them
    all: ranked by the length of their records' text, then tokenised (and so cached)."""
    ranked = sorted(range(len(records)), key=lambda i: len(json.dumps(records[i], ensure_ascii=False)),
                    reverse=True)
    return [examples[i] for i in ranked[:count]]
