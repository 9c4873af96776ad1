"""Everyday replay: the base's own answers to everyday prompts, mixed into a job so that a
chat base trained on one narrow task keeps answering everything else as it did.

A first job has no track history to replay, and SmolLM2 trained on the person-JSON task
alone answered "Name three colors." with JSON. Hand-written answers did not do: trained
on "4 plus 5 is 9." it took up that phrasing and got sums wrong in it ("2 + 3 is 6").
So the targets are the base's own greedy answers (self-distillation): what it already
says, reinforced. They are worked out once per base version, kept in
``bases/vN/honed_everyday.json`` (``Workspace.base_cache_file``), and only
answers that ended within the budget are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from honed.atomic_files import write_json_atomically
from honed.data.formats import record_hash

log = logging.getLogger(__name__)

PROMPTS = Path(__file__).resolve().parent.parent / "data" / "shipped" / "everyday.jsonl"
MAX_NEW_TOKENS = 64


def everyday_prompts() -> list[str]:
    """The shipped everyday prompts (short facts, sums, lists, sentences, formats)."""
    return [json.loads(line)["prompt"] for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def everyday_records(workspace, base_path: str, base_version: int) -> list[dict]:
    """Chat records of the everyday prompts with the base's own greedy answers, hashed
    like ingested records; generated on first use for a base version, then cached."""
    digest = hashlib.sha256(PROMPTS.read_bytes() + str(MAX_NEW_TOKENS).encode()).hexdigest()
    cache = workspace.base_cache_file(base_version, "honed_everyday.json")
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):
        cached = None
    if not isinstance(cached, dict) or cached.get("sha256") != digest:
        cached = {"sha256": digest, "base_version": base_version, "records": _answer(base_path)}
        try:
            write_json_atomically(cache, cached)
        except OSError as exc:  # a read-only shared bases/: work it out again next time
            log.warning("everyday answers of base v%d not cached at %s: %s", base_version, cache, exc)
    return [dict(r, hash=record_hash(r)) for r in cached["records"]]


def _answer(base_path: str) -> list[dict]:
    import torch

    from honed.evaluation.exact_match import generate_answers
    from honed.training.model_loading import load_base_model, load_tokenizer, pick_device

    prompts = everyday_prompts()
    tokenizer = load_tokenizer(base_path)
    model = load_base_model(base_path, pick_device())
    answers = generate_answers(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                               max_new_tokens=MAX_NEW_TOKENS, batch_size=20)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    records = []
    for prompt, answer in zip(prompts, answers):
        # An answer cut off by the budget would teach the model to stop mid-sentence.
        if answer and len(tokenizer(answer, add_special_tokens=False)["input_ids"]) < MAX_NEW_TOKENS - 1:
            records.append({"messages": [{"role": "user", "content": prompt},
                                         {"role": "assistant", "content": answer}]})
    log.info("everyday replay: the base answered %d of %d prompts within %d tokens", len(records), len(prompts),
             MAX_NEW_TOKENS)
    return records
