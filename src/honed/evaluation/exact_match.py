"""Exact-match scoring: greedy answers to chat prompts, compared with references.

Works the same for a plain transformers model and for a peft model with an adapter.
Prompts are rendered with the tokenizer's chat template (with the generation prompt),
generated in batches with left padding, cut at the end-of-turn token, and only the new
tokens are decoded.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.data.chat_encoding import encode_chat

__all__ = ["GREEDY", "Sampling", "exact_match", "generate_answers", "load_records"]


@dataclass(frozen=True)
class Sampling:
    """How the next tokens are picked, as OpenAI defines it: ``temperature`` 0 is greedy;
    above 0 tokens are sampled from the softmax at that temperature, kept to the smallest
    set whose probability reaches ``top_p`` (no top-k). The same ``seed`` and request give
    the same answer; without one, each answer draws a fresh seed."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generate_kwargs(self) -> dict:
        if self.greedy:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}

    def seed_torch(self, offset: int = 0) -> None:
        """Seed torch's generator for the draws of one generation (``offset`` tells apart
        the batches of one call): from ``seed``, or a fresh random seed without one."""
        import torch

        torch.manual_seed((self.seed if self.seed is not None else secrets.randbits(62)) + offset)

    def described(self) -> dict:
        """What an experience records of how its output was drawn."""
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}


GREEDY = Sampling()


def load_records(path: Path) -> list[dict]:
    """Read a chat JSONL file: one `{"messages": [...]}` object per non-blank line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list) or not messages:
                raise ValueError(f"{path}:{line_no}: expected an object with a 'messages' list")
            records.append(record)
    return records


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus whatever the generation config names."""
    ids = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif config_eos:
        ids.update(config_eos)
    ids.discard(None)
    return sorted(ids)


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict]],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 64,
    sampling: Sampling = GREEDY,
) -> list[str]:
    """Answers to `prompts` (chat messages without the final assistant turn), greedy
    unless `sampling` says otherwise (a sampled batch is seeded from `sampling.seed` and
    its position, so the same call gives the same answers).

    Each answer is the decoded text of the new tokens up to (not including) the first
    end-of-turn token, stripped. Order follows `prompts`. The model's train/eval mode
    is restored afterwards.
    """
    import torch

    if not prompts:
        return []
    # Control tokens typed inside a prompt are encoded as text, as when serving.
    encoded = [encode_chat(tokenizer, messages, add_generation_prompt=True) for messages in prompts]
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    # Batching prompts of similar length together keeps left padding (wasted work) small.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].text))
    answers: list[str] = [""] * len(encoded)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                input_ids, attention_mask = left_padded([encoded[i].input_ids for i in chunk], pad_id)
                if not sampling.greedy:
                    sampling.seed_torch(start)
                output = model.generate(
                    input_ids=input_ids.to(model.device),
                    attention_mask=attention_mask.to(model.device),
                    max_new_tokens=max_new_tokens,
                    eos_token_id=stop_ids,
                    pad_token_id=pad_id,
                    **sampling.generate_kwargs(),
                )
                new_tokens = output[:, input_ids.shape[1] :].tolist()
                for i, tokens in zip(chunk, new_tokens):
                    answers[i] = decode_until_stop(tokenizer, tokens, stop_ids)
    finally:
        model.train(was_training)
    return answers


def left_padded(sequences: list[list[int]], pad_id: int):
    """``sequences`` as one batch padded on the left (generation continues on the right):
    the input ids and their attention mask, both ``(len(sequences), longest)`` tensors."""
    import torch

    width = max(len(ids) for ids in sequences)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in sequences], dtype=torch.long)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in sequences], dtype=torch.long)
    return input_ids, attention_mask


def answer_budget(tokenizer: Any, references: list[str]) -> int:
    """New tokens enough for the longest reference plus its end-of-turn token: a long
    reference is never cut short and a babbling model is cut early."""
    return max(len(tokenizer(ref, add_special_tokens=False)["input_ids"]) for ref in references) + 1


def decode_until_stop(tokenizer: Any, tokens: list[int], stop_ids: list[int]) -> str:
    cut = next((k for k, token in enumerate(tokens) if token in stop_ids), len(tokens))
    return model_text(tokenizer.decode(tokens[:cut], skip_special_tokens=True)).strip()


def model_text(text: str) -> str:
    """Generated text as honed hands it out and stores it: a NUL character (a byte token
    a model can sample) is shown as U+2400 (SYMBOL FOR NULL), since no text column of
    PostgreSQL, and no training line, may hold a NUL."""
    return text.replace("\x00", "\u2400")


def exact_match(
    model: Any, tokenizer: Any, records: list[dict], *, max_new_tokens: int | None = None, **kw
) -> float:
    """Fraction in [0, 1] of `records` whose greedy answer equals the reference exactly.

    Each record is a chat record whose last message is the assistant reference; the
    messages before it are the prompt. Both sides are compared stripped. By default
    `max_new_tokens` is just enough for the longest reference (plus its end-of-turn
    token), so a long reference is never cut short and a babbling model is cut early.
    Other keyword arguments go to `generate_answers`.
    """
    if not records:
        raise ValueError("exact_match needs at least one record")
    for k, record in enumerate(records):
        last = record["messages"][-1]
        if last.get("role") != "assistant":
            raise ValueError(f"record {k}: the last message must be the assistant reference")
    references = [record["messages"][-1]["content"].strip() for record in records]
    if max_new_tokens is None:
        max_new_tokens = answer_budget(tokenizer, references)
    answers = generate_answers(
        model,
        tokenizer,
        [record["messages"][:-1] for record in records],
        max_new_tokens=max_new_tokens,
        **kw,
    )
    return sum(a == r for a, r in zip(answers, references)) / len(records)
