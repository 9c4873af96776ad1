"""Learning from preferences: DPO on chosen/rejected pairs, KTO on unpaired thumbs.

The losses are TRL's (``DPOTrainer`` with ``loss_type="sigmoid"``, ``KTOTrainer`` with
``loss_type="kto"``), written as plain functions of sequence log-probabilities; an
invariant test holds them equal to TRL's own on the same pairs and weights.

A record's completion is tokenised the way SFT finds assistant tokens
(:func:`honed.data.tokenization.assistant_char_spans`): the prompt and the completion
are rendered as one conversation, and the tokens inside the completion's assistant turns
are the ones scored. A sequence's log-probability is the sum over those tokens.

The reference policy is the base itself, the adapter disabled for one forward pass
under ``no_grad``: no second copy of the model. Its log-probabilities depend on the
record alone, so :class:`ReferenceLogps` computes each once, one sequence at a time (no
padding, so the value never depends on the batch it first met), and keeps it by record
hash; a resumed attempt recomputes the very same numbers.

KTO's KL term is estimated, as TRL does, from mismatched pairs within a micro-batch:
prompt ``i`` with the completion of example ``i - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from honed.config import TrainSettings
from honed.data.chat_encoding import ChatEncodingError, encode_chat
from honed.data.tokenization import IGNORE, TokenizationError, assistant_char_spans

OBJECTIVES = ("sft", "dpo", "kto")


# --- tokenising --------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """A prompt followed by one completion, as tokens.

    ``completion_mask[i]`` says whether token ``i`` is the completion's (scored). The ids
    end with the completion's last token: what a template writes after it cannot change
    the log-probability of what came before. ``prompt_len`` is the index of the first
    completion token (KTO builds its mismatched pairs at this boundary)."""

    input_ids: list[int]
    completion_mask: list[bool]
    prompt_len: int

    @property
    def n_completion(self) -> int:
        return sum(self.completion_mask)


@dataclass(frozen=True)
class PreferencePair:
    """A DPO example: the same prompt with a chosen and a rejected completion."""

    chosen: Completion
    rejected: Completion


@dataclass(frozen=True)
class Judged:
    """A KTO example: a completion with a thumb up (desirable) or down."""

    completion: Completion
    desirable: bool


def tokenize_completion(tokenizer: Any, prompt: list[dict[str, Any]], completion: list[dict[str, Any]],
                        max_len: int) -> Completion:
    """Tokenise ``prompt + completion`` and mark the completion's assistant tokens."""
    if not completion or any(m.get("role") != "assistant" for m in completion):
        raise TokenizationError("a completion is one or more assistant messages")
    messages = list(prompt) + list(completion)
    text, spans = assistant_char_spans(tokenizer, messages, first=len(prompt))
    try:
        enc = encode_chat(tokenizer, messages, add_generation_prompt=False, offsets=True)
    except ChatEncodingError as exc:
        raise TokenizationError(str(exc)) from None
    assert enc.text == text and enc.offsets is not None
    mask = [any(start <= a and b <= end and b > a for start, end in spans) for a, b in enc.offsets]
    if not any(mask):
        raise TokenizationError("the completion has no token to score (empty completion)")
    end = max(i for i, m in enumerate(mask) if m) + 1
    if end > max_len:
        raise TokenizationError(f"{end} tokens, more than train.max_seq_len = {max_len}; raise it or "
                                "shorten the record")
    return Completion(list(enc.input_ids[:end]), mask[:end], mask.index(True))


def tokenize_preference(tokenizer: Any, record: dict[str, Any], max_len: int,
                        objective: str) -> PreferencePair | Judged:
    """Tokenise one normalised preference (``dpo``) or unpaired (``kto``) record."""
    need = ("prompt", "chosen", "rejected") if objective == "dpo" else ("prompt", "completion", "label")
    missing = [key for key in need if key not in record]
    if missing:
        kind = "a preference pair" if objective == "dpo" else "an unpaired judgement"
        raise TokenizationError(f"train.objective = {objective!r} needs {kind} ({', '.join(need)}); "
                                f"this record has no {', '.join(missing)}")
    if objective == "dpo":
        return PreferencePair(tokenize_completion(tokenizer, record["prompt"], record["chosen"], max_len),
                              tokenize_completion(tokenizer, record["prompt"], record["rejected"], max_len))
    return Judged(tokenize_completion(tokenizer, record["prompt"], record["completion"], max_len),
                  bool(record["label"]))


class TokenizedPreferences(Sequence[tuple[str, PreferencePair | Judged]]):
    """(record hash, example) pairs, tokenised on first use and kept (as
    :class:`~honed.data.tokenization.TokenizedRecords` does for SFT). A record that
    cannot be tokenised raises TokenizationError naming its split, hash and line."""

    def __init__(self, tokenizer: Any, records: list[dict[str, Any]], max_len: int, split: str,
                 objective: str) -> None:
        self.tokenizer = tokenizer
        self.records = records
        self.max_len = max_len
        self.split = split
        self.objective = objective
        self._done: list[PreferencePair | Judged | None] = [None] * len(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        record = self.records[index]
        example = self._done[index]
        if example is None:
            try:
                example = tokenize_preference(self.tokenizer, record, self.max_len, self.objective)
            except TokenizationError as exc:
                raise TokenizationError(
                    f"{self.split} record {record['hash'][:12]} (line {record.get('line')}): {exc}") from None
            self._done[index] = example
        return record["hash"], example


# --- log-probabilities ---------------------------------------------------------------------


@dataclass
class CompletionBatch:
    """Completions padded on the right into one tensor batch."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def pad_completions(items: list[Completion], pad_id: int, device: torch.device | None = None) -> CompletionBatch:
    """Right-pad ``items`` to the longest; padding is neither attended to nor scored."""
    width = max(len(c.input_ids) for c in items)

    def padded(rows: list[list[int]], fill: int) -> torch.Tensor:
        return torch.tensor([row + [fill] * (width - len(row)) for row in rows], dtype=torch.long, device=device)

    return CompletionBatch(
        padded([c.input_ids for c in items], pad_id),
        padded([[1] * len(c.input_ids) for c in items], 0),
        padded([[int(m) for m in c.completion_mask] for c in items], 0),
    )


def sequence_logps(model, batch: CompletionBatch) -> torch.Tensor:
    """Sum of the log-probabilities of each sequence's completion tokens, shape ``(batch,)``."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    logits = logits[:, :-1].float()
    targets = batch.input_ids[:, 1:].masked_fill(batch.completion_mask[:, 1:] == 0, IGNORE)
    token_logps = -F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=IGNORE, reduction="none")
    return token_logps.view(targets.shape).sum(-1)


class ReferenceLogps:
    """Log-probabilities under the reference policy (``model`` with its adapter disabled),
    computed once per (record hash, side) and kept."""

    def __init__(self, model, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.cache: dict[tuple[str, str], float] = {}

    def of(self, key: str, side: str, completion: Completion) -> float:
        if (key, side) not in self.cache:
            self.cache[(key, side)] = float(self.batch([completion])[0])
        return self.cache[(key, side)]

    @torch.no_grad()
    def batch(self, items: list[Completion]) -> torch.Tensor:
        """The reference log-probabilities of ``items`` in one padded forward pass."""
        device = next(self.model.parameters()).device
        with self.model.disable_adapter():
            return sequence_logps(self.model, pad_completions(items, self.pad_id, device))


# --- losses ----------------------------------------------------------------------------------


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO per pair, and the implicit rewards of the chosen and rejected sides
    (TRL's ``loss_type="sigmoid"``, label smoothing 0)."""
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor,
             policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """KTO per example (desirable ones first), the rewards of the desirable and
    undesirable examples, and the KL estimate (TRL's ``loss_type="kto"``).

    The KL estimate is the mean log-ratio of the mismatched pairs, never negative and
    without gradient: it sets the reference point the rewards are compared with."""
    kl = (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    logratios = policy_logps - ref_logps
    chosen, rejected = logratios[desirable], logratios[~desirable]
    losses = torch.cat((desirable_weight * (1 - torch.sigmoid(beta * (chosen - kl))),
                        undesirable_weight * (1 - torch.sigmoid(beta * (kl - rejected)))))
    return losses, beta * chosen.detach(), beta * rejected.detach(), kl


def mismatched(items: list[Completion]) -> list[Completion]:
    """KTO's KL pairs: prompt ``i`` with the completion of item ``i - 1`` (the last item's
    for the first), joined at the token boundary as TRL joins them."""
    shifted = items[-1:] + items[:-1]
    return [Completion(p.input_ids[: p.prompt_len] + c.input_ids[c.prompt_len:],
                       [False] * p.prompt_len + c.completion_mask[c.prompt_len:], p.prompt_len)
            for p, c in zip(items, shifted, strict=True)]


def balanced_kto_weights(examples: TokenizedPreferences, cfg: TrainSettings) -> dict[str, Any]:
    """The KTO weights a run uses, and the label counts of its training split: with
    ``train.kto_balance`` the weight of the rarer label is multiplied by the ratio of the
    counts, so both labels carry the same total weight."""
    desirable = sum(1 for record in examples.records if record["label"] is True)
    undesirable = len(examples.records) - desirable
    weights = {"desirable_weight": cfg.desirable_weight, "undesirable_weight": cfg.undesirable_weight}
    if cfg.kto_balance and desirable and undesirable:
        if desirable < undesirable:
            weights["desirable_weight"] *= undesirable / desirable
        else:
            weights["undesirable_weight"] *= desirable / undesirable
    return {**weights, "desirable": desirable, "undesirable": undesirable, "balanced": cfg.kto_balance}


# --- one micro-batch, one step ------------------------------------------------------------------


def micro_batch_losses(model, reference: ReferenceLogps, batch: list[tuple[str, PreferencePair | Judged]],
                       cfg: TrainSettings, pad_id: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Per-example losses of one micro-batch under ``cfg.objective``, and its sums for the
    step's figures."""
    device = next(model.parameters()).device
    if cfg.objective == "dpo":
        pairs: list[tuple[str, Any]] = batch
        sides = [p.chosen for _, p in pairs] + [p.rejected for _, p in pairs]
        padded = pad_completions(sides, pad_id, device)
        chosen_logps, rejected_logps = sequence_logps(model, padded).chunk(2)
        ref_chosen = torch.tensor([reference.of(k, "chosen", p.chosen) for k, p in pairs], device=device)
        ref_rejected = torch.tensor([reference.of(k, "rejected", p.rejected) for k, p in pairs], device=device)
        losses, chosen_rewards, rejected_rewards = dpo_loss(chosen_logps, rejected_logps, ref_chosen, ref_rejected,
                                                            cfg.beta)
        sums = {"chosen": chosen_rewards.sum().item(), "rejected": rejected_rewards.sum().item(),
                "n_chosen": len(pairs), "n_rejected": len(pairs), "pairs": len(pairs),
                "correct": (chosen_rewards > rejected_rewards).sum().item(),
                "tokens": padded.n_tokens, "targets": int(padded.completion_mask.sum())}
        return losses, sums
    judged: list[tuple[str, Any]] = batch
    items = [ex.completion for _, ex in judged]
    padded = pad_completions(items, pad_id, device)
    # TRL computes the policy's KL pass without gradient too (before the main pass).
    kl_items = mismatched(items)
    with torch.no_grad():
        policy_kl = sequence_logps(model, pad_completions(kl_items, pad_id, device))
    ref_kl = reference.batch(kl_items)
    policy_logps = sequence_logps(model, padded)
    ref_logps = torch.tensor([reference.of(k, "completion", ex.completion) for k, ex in judged], device=device)
    desirable = torch.tensor([ex.desirable for _, ex in judged], dtype=torch.bool, device=device)
    losses, chosen_rewards, rejected_rewards, kl = kto_loss(
        policy_logps, ref_logps, desirable, policy_kl, ref_kl, cfg.beta, cfg.desirable_weight,
        cfg.undesirable_weight)
    sums = {"chosen": chosen_rewards.sum().item(), "rejected": rejected_rewards.sum().item(),
            "n_chosen": len(chosen_rewards), "n_rejected": len(rejected_rewards), "kl": kl.item(),
            "tokens": padded.n_tokens, "targets": int(padded.completion_mask.sum())}
    return losses, sums


def step_figures(totals: dict[str, float], objective: str) -> dict[str, float]:
    """The step's preference figures, as TRL names them, from the sums of its
    micro-batches (:data:`SUMMED`, and ``parts``: how many micro-batches)."""
    n_chosen, n_rejected = totals["n_chosen"], totals["n_rejected"]
    figures: dict[str, float] = {}
    if n_chosen:
        figures["rewards/chosen"] = totals["chosen"] / n_chosen
    if n_rejected:
        figures["rewards/rejected"] = totals["rejected"] / n_rejected
    if n_chosen and n_rejected:
        figures["rewards/margins"] = figures["rewards/chosen"] - figures["rewards/rejected"]
    if objective == "dpo":
        figures["rewards/accuracies"] = totals["correct"] / max(1.0, totals["pairs"])
    else:
        figures["kl"] = totals["kl"] / max(1.0, totals["parts"])
    return figures


SUMMED = ("chosen", "rejected", "n_chosen", "n_rejected", "correct", "pairs", "kl", "tokens", "targets")


def summed(parts: list[dict[str, Any]]) -> dict[str, float]:
    """The micro-batches' sums added up (what :func:`step_figures` reads), with ``parts``."""
    return {**{key: float(sum(p.get(key, 0) for p in parts)) for key in SUMMED}, "parts": float(len(parts))}


def preference_train_step(model, reference: ReferenceLogps, optimizer, params,
                          batches: list[list[tuple[str, PreferencePair | Judged]]], cfg: TrainSettings, lr: float,
                          pad_id: int, dist=None, filler: list[tuple[str, PreferencePair | Judged]] | None = None,
                          ) -> dict[str, Any]:
    """One optimizer step of DPO or KTO over ``batches`` (its micro-batches), with SFT's
    non-finite policy; the loss is the mean over the step's examples.

    In a world of several processes (``dist``, as in
    :func:`honed.training.trainer.train_step`) the mean is over the step's examples on
    all of them, every process makes ``grad_accum`` passes (those without data of their
    own on ``filler`` with weight zero) so that the gradient exchanges meet, and the
    figures returned are the whole step's. ``model`` is then the wrapped module; the
    reference runs on the unwrapped one, outside the exchanges."""
    from honed.training.distributed import Dist
    from honed.training.trainer import apply_update

    dist = dist or Dist()
    n_examples = sum(len(b) for b in batches)
    if dist.active:
        n_examples = int(dist.sum([float(n_examples)])[0])
    passes: list[list | None] = list(batches)
    if dist.active:
        passes += [None] * (cfg.grad_accum - len(batches))
    loss_total = 0.0
    parts = []
    for i, batch in enumerate(passes):
        last = i == len(passes) - 1
        with model.no_sync() if dist.active and not last and hasattr(model, "no_sync") else nullcontext():
            if batch is None:
                losses, _ = micro_batch_losses(model, reference, filler, cfg, pad_id)
                loss = losses.sum() * 0.0
            else:
                losses, sums = micro_batch_losses(model, reference, batch, cfg, pad_id)
                loss = losses.sum() / n_examples
                loss_total += loss.item()
                parts.append(sums)
            # Data parallelism averages the processes' gradients: scale by the world back to a sum.
            (loss * dist.world if dist.active else loss).backward()
    totals = {**summed(parts), "loss": loss_total}
    if dist.active:
        totals = dict(zip(totals, dist.sum(list(totals.values())), strict=True))
    grad_norm, problem = apply_update(optimizer, params, cfg, lr, totals["loss"])
    return {"loss": totals["loss"], "grad_norm": grad_norm, "lr": lr, "problem": problem,
            "targets": int(totals["targets"]), "tokens": int(totals["tokens"]),
            "figures": step_figures(totals, cfg.objective)}


@torch.no_grad()
def preference_validation_loss(model, reference: ReferenceLogps, examples: TokenizedPreferences,
                               cfg: TrainSettings, pad_id: int) -> float | None:
    """Mean DPO or KTO loss over held-out examples (None when there are none)."""
    if not len(examples):
        return None
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(examples), cfg.batch_size):
        losses, _ = micro_batch_losses(model, reference, examples[i: i + cfg.batch_size], cfg, pad_id)
        total += losses.sum().item()
        n += losses.numel()
    model.train(was_training)
    return total / n
