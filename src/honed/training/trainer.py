"""The pieces a training attempt is made of; :mod:`honed.training.recipe` puts them in order.

This is honed's own loop over torch + transformers + peft (DESIGN.md, "Training
engine"). It owns what stock trainers fight: control checked at every optimizer-step
boundary, atomic checkpoints that hold everything needed to continue exactly (adapter,
optimizer, schedule state, RNG states, data position), and a policy for non-finite
losses and exploding gradients that never lets a bad update reach the weights.

Data order is a pure function of (seed, step): step ``s`` of epoch ``e`` takes the
``s``-th slice of a permutation seeded by ``seed + e``. Resuming from a checkpoint at
step ``s`` therefore continues with exactly the examples an uninterrupted run would see.

With ``train.nproc > 1`` the same loop runs in every process of a torchrun world (see
:mod:`honed.training.distributed`): each process takes its share of the step's
micro-batches, gradients are averaged across processes, rank 0 alone records and writes,
and rank 0's decision at each step boundary (train on, pause, stop, cancel) is everyone's.
"""

from __future__ import annotations

import json
import logging
import math
import random
import resource
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from honed import faults
from honed.atomic_files import atomic_directory, recover_directory
from honed.config import TrainSettings
from honed.data.packing import PackedBatch, pack_batch
from honed.data.tokenization import IGNORE, Example, TokenizationError
from honed.training import checkpoints as ckpt
from honed.training.distributed import Dist

log = logging.getLogger(__name__)

class TrainingDiverged(RuntimeError):
    """The non-finite policy gave up on the run."""


@dataclass
class LoopState:
    """The part of the loop's state that a checkpoint carries besides tensors."""

    step: int = 0
    lr_scale: float = 1.0
    bad_in_a_row: int = 0
    bad_total: int = 0
    tokens_seen: int = 0


# --- schedule and data order -------------------------------------------------------


def learning_rate(step: int, total: int, cfg: TrainSettings, lr_scale: float) -> float:
    """Peak lr × warm-up × decay × the non-finite policy's scale, for optimizer step ``step``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        factor = (step + 1) / cfg.warmup_steps
    elif cfg.schedule == "constant":
        factor = 1.0
    else:
        span = max(1, total - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        factor = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.lr * factor * lr_scale


def examples_per_step(cfg: TrainSettings) -> int:
    """The global batch: examples per optimizer step over all processes."""
    return cfg.batch_size * cfg.grad_accum * cfg.world_size


def steps_per_epoch(n_examples: int, cfg: TrainSettings) -> int:
    return max(1, math.ceil(n_examples / examples_per_step(cfg)))


def total_steps(n_examples: int, cfg: TrainSettings) -> int:
    steps = max(1, math.ceil(cfg.epochs * steps_per_epoch(n_examples, cfg)))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def examples_for_step(step: int, n_examples: int, cfg: TrainSettings, rank: int = 0) -> list[list[int]]:
    """Indices of the examples of each micro-batch that process ``rank`` (of
    ``cfg.world_size``, over all machines) trains on at optimizer step ``step``.

    The step's examples depend on the global batch alone: one process with batch_size 8
    and two with batch_size 4 see the same eight examples at every step, split 4 + 4. At
    the end of an epoch a process may get fewer micro-batches than ``grad_accum``, or none."""
    spe = steps_per_epoch(n_examples, cfg)
    epoch, k = divmod(step, spe)
    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(cfg.seed + epoch))
    per_step = examples_per_step(cfg)
    chosen = order[k * per_step : (k + 1) * per_step].tolist()
    micro = [chosen[i : i + cfg.batch_size] for i in range(0, len(chosen), cfg.batch_size)]
    return micro[rank * cfg.grad_accum : (rank + 1) * cfg.grad_accum]


# --- loss ----------------------------------------------------------------------------


# Architectures whose logits are the head applied to the decoder's last hidden state, and
# nothing more (no soft-capping or scaling of the logits): their loss can skip the head
# where no token is scored.
PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3"})
HEAD_CHUNK = 1024  # scored positions per chunk of the head's logits


def batch_loss_sum(model, batch: PackedBatch) -> torch.Tensor:
    """Sum of the token losses of one packed micro-batch (divide by the step's targets).

    Where the model allows it (:func:`_decoder_and_head`), the head runs only at the
    positions that have a target (the assistant's tokens of a chat; every token of a
    text), in chunks of ``HEAD_CHUNK`` positions whose logits are recomputed in the
    backward pass rather than kept: the (tokens x vocabulary) logits tensor, 49,152 wide
    on SmolLM2, never exists, and the head's work on prompts is not done at all."""
    parts = _decoder_and_head(model)
    if parts is None:
        out = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask,
            position_ids=batch.position_ids, use_cache=False,
        )
        logits = out.logits.float()
        return F.cross_entropy(
            logits.view(-1, logits.size(-1)), batch.targets.view(-1),
            ignore_index=IGNORE, reduction="sum",
        )
    decoder, head = parts
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     position_ids=batch.position_ids, use_cache=False).last_hidden_state
    targets = batch.targets.reshape(-1)
    scored = (targets != IGNORE).nonzero().squeeze(-1)
    hidden, targets = hidden.reshape(-1, hidden.size(-1)).index_select(0, scored), targets.index_select(0, scored)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(scored), HEAD_CHUNK):
        chunk = (head, hidden[start : start + HEAD_CHUNK], targets[start : start + HEAD_CHUNK])
        if torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            total = total + checkpoint(_head_loss_sum, *chunk, use_reentrant=False)
        else:
            total = total + _head_loss_sum(*chunk)
    return total


def _head_loss_sum(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def _decoder_and_head(model):
    """The decoder and the head of ``model`` (a transformers causal LM, bare or with peft
    adapters) when its logits are the plain head of the decoder's output; None for other
    architectures, and for a model wrapped for data parallelism, which must be called
    whole for its gradients to be exchanged."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel | FSDPModule):
        return None
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(getattr(inner, "config", None), "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    get_decoder, get_head = getattr(inner, "get_decoder", None), getattr(inner, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    decoder, head = get_decoder(), get_head()
    if decoder is None or head is None or decoder is inner:
        return None
    return decoder, head


def train_step(model, optimizer, params, batches: list[PackedBatch], cfg: TrainSettings, lr: float,
               dist: Dist | None = None, filler: PackedBatch | None = None) -> dict:
    """Forward and backward over the micro-batches of one step; apply the update only if
    the loss and the gradient norm are sound. Returns the step's figures.

    In a world of several processes (``dist``), the loss is normalised by the step's
    targets on all of them, so the averaged gradient is the one a single process would
    get from the whole global batch. Every process makes ``grad_accum`` passes, those
    without data of their own on ``filler`` with weight zero, so that the gradient
    exchanges of all processes meet; the figures returned are the whole step's."""
    dist = dist or Dist()
    local_targets = sum(b.n_targets for b in batches)
    local_tokens = sum(b.n_tokens for b in batches)
    n_targets = int(dist.sum([float(local_targets)])[0]) if dist.active else local_targets
    if n_targets == 0:
        raise TokenizationError("a batch has an empty assistant mask: nothing to train on")
    device = next(model.parameters()).device
    passes: list[PackedBatch | None] = list(batches)
    if dist.active:
        passes += [None] * (cfg.grad_accum - len(batches))
    loss_total = 0.0
    for i, batch in enumerate(passes):
        last = i == len(passes) - 1
        with model.no_sync() if dist.active and not last and hasattr(model, "no_sync") else nullcontext():
            if batch is None:
                loss = batch_loss_sum(model, filler.to(device)) * 0.0
            else:
                loss = batch_loss_sum(model, batch.to(device)) / n_targets
                loss_total += loss.item()
            # Data parallelism averages the processes' gradients: scale by the world back to a sum.
            (loss * dist.world if dist.active else loss).backward()
    if dist.active:
        loss_total, local_tokens = dist.sum([loss_total, float(local_tokens)])
    grad_norm, problem = apply_update(optimizer, params, cfg, lr, loss_total)
    return {
        "loss": loss_total, "grad_norm": grad_norm, "lr": lr, "problem": problem,
        "targets": n_targets, "tokens": int(local_tokens),
    }


def apply_update(optimizer, params, cfg: TrainSettings, lr: float, loss_total: float) -> tuple[float, str | None]:
    """Clip the accumulated gradients and step the optimizer, unless the loss or the
    gradient norm is unsound; returns the norm and the problem (None when applied)."""
    faults.point("step.backward")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    problem = None
    if not math.isfinite(loss_total):
        problem = f"non-finite loss {loss_total}"
    elif not math.isfinite(grad_norm) or grad_norm > cfg.grad_norm_limit:
        problem = f"gradient norm {grad_norm:.4g} above train.grad_norm_limit {cfg.grad_norm_limit:g}"
    if problem is None:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, problem


@torch.no_grad()
def validation_loss(model, examples: Sequence[Example], cfg: TrainSettings, pad_id: int) -> float | None:
    """Mean token loss over held-out examples (None when there are none)."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for i in range(0, len(examples), cfg.batch_size):
        batch = pack_batch(examples[i : i + cfg.batch_size], cfg.max_seq_len, pad_id, cfg.pack)
        total += batch_loss_sum(model, batch.to(device)).item()
        n += batch.n_targets
    model.train(was_training)
    return total / n


# --- checkpoints ------------------------------------------------------------------------


def save_checkpoint(model, optimizer, state: LoopState, checkpoints_dir: Path,
                    dist: Dist | None = None) -> ckpt.CheckpointInfo | None:
    """Write everything needed to continue exactly, atomically. With a sharded model
    (FSDP) every rank calls this, and rank 0 writes (None on the others)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    dist = dist or Dist()
    adapter = get_peft_model_state_dict(model, state_dict=dist.lora_state(model))
    optimizer_state = dist.optimizer_state(model, optimizer)
    if not dist.main:
        return None
    if not all(torch.isfinite(t).all() for t in adapter.values()):
        raise TrainingDiverged("adapter weights are not finite; refusing to checkpoint them")

    def write_files(staging: Path) -> None:
        save_file({k: v.contiguous() for k, v in adapter.items()}, str(staging / "adapter_model.safetensors"))
        torch.save(optimizer_state, staging / "optimizer.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, staging / "rng.pt")
        py_state = random.getstate()
        (staging / "trainer_state.json").write_text(json.dumps(
            {**state.__dict__, "python_rng": [py_state[0], list(py_state[1]), py_state[2]]}
        ))

    return ckpt.write_checkpoint_atomically(checkpoints_dir, state.step, write_files, {"attempt_step": state.step})


def restore_adapter(path: Path, model) -> None:
    """Load the adapter weights of a checkpoint written by :func:`save_checkpoint` into
    ``model`` (before it is wrapped for data parallelism)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors"), device=str(device)))


def restore_training_state(path: Path, model, optimizer, dist: Dist | None = None) -> LoopState:
    """Load the rest of a checkpoint (optimizer, RNG states, position) and return where
    the loop stood."""
    device = next(model.parameters()).device
    state = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
    (dist or Dist()).load_optimizer_state(model, optimizer, state)
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    raw = json.loads((path / "trainer_state.json").read_text())
    version, internal, gauss = raw.pop("python_rng")
    random.setstate((version, tuple(internal), gauss))
    return LoopState(**raw)


# --- the attempt --------------------------------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_adapter(model, out: Path, state_dict: dict | None = None) -> Path:
    """Save the LoRA adapter as ``out`` in one durable step; a previous adapter there stays
    loadable until the new one is in place (see :func:`honed.atomic_files.atomic_directory`)."""
    recover_directory(out)  # what a trainer killed in an earlier save left behind
    with atomic_directory(out) as staging:
        model.save_pretrained(staging, state_dict=state_dict)
    return out
