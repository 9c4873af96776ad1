"""A compact full-parameter loop that teaches the tiny base its first skills.

This is not honed's trainer (that one trains LoRA adapters with checkpoints, resume and
packing); it only gives a freshly initialised tiny model something to know, so that
adapters trained on it start from a base that already answers some tasks. Deterministic
for a seed on a given machine and thread count.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from typing import Any

from honed.data.synthetic import chat_record, generate, get_family

__all__ = ["encode_for_answer_loss", "pretrain"]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def encode_for_answer_loss(tokenizer: Any, records: Sequence[dict]) -> dict:
    """Right-padded tensors for `records`, with labels on the assistant answer only.

    The labels cover the last message (the answer) and its end-of-turn token, which is
    what teaches the model to stop; the prompt, the template and the padding are masked.
    """
    import torch

    rows: list[tuple[list[int], int]] = []
    for record in records:
        prompt = tokenizer.apply_chat_template(
            record["messages"][:-1], tokenize=False, add_generation_prompt=True
        )
        answer = record["messages"][-1]["content"] + tokenizer.eos_token
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        rows.append((prompt_ids + answer_ids, len(prompt_ids)))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _warmup_cosine(warmup: int, total: int, floor: float = 0.1):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def pretrain(
    model: Any,
    tokenizer: Any,
    families: Sequence[str],
    *,
    steps: int,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
    eval_n: int = 300,
) -> dict:
    """Train all of `model`'s weights on `families`; return the exact match reached.

    Each batch mixes the families evenly. The eval prompts (the first `eval_n` distinct
    prompts of each family for `seed`) never appear in training, so the scores returned
    are held-out scores: `{"steps", "seconds", "final_loss", "exact_match": {family: x}}`.
    """
    import torch

    from honed.evaluation.exact_match import exact_match

    samplers = [get_family(name).sample for name in families]
    eval_sets = {name: generate(name, eval_n, seed=seed) for name in families}
    held_out = {
        name: {record["messages"][0]["content"] for record in records}
        for name, records in eval_sets.items()
    }
    rng = random.Random(f"pretrain:{seed}")
    torch.manual_seed(seed)

    def next_batch() -> dict:
        records = []
        while len(records) < batch_size:
            k = len(records) % len(families)
            prompt, answer = samplers[k](rng)
            if prompt not in held_out[families[k]]:
                records.append(chat_record(prompt, answer))
        return encode_for_answer_loss(tokenizer, records)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(warmup=max(1, steps // 20), total=steps)
    )
    model.train()
    started = time.monotonic()
    loss_value = float("nan")
    for step in range(steps):
        batch = next_batch()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if step % 100 == 0 or step == steps - 1:
            log.info("pretrain step %d/%d loss %.4f", step + 1, steps, loss_value)
    model.eval()
    scores = {name: exact_match(model, tokenizer, records) for name, records in eval_sets.items()}
    seconds = time.monotonic() - started
    log.info("pretrain done in %.1f s: exact match %s", seconds, scores)
    return {
        "steps": steps,
        "seconds": round(seconds, 1),
        "final_loss": round(loss_value, 4),
        "exact_match": scores,
    }
