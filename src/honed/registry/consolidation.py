"""Consolidation: merge a track's deployed adapter into its base and make the result the
next base version, with lineage.

The base is loaded in full precision (never merged into a quantized base), the adapter
merged with peft, and the merged model checked against base + adapter on eval prompts
(logits within a tolerance, and the same greedy answers) before anything is recorded.
The new base is written durably into ``bases/vN`` (:func:`~honed.atomic_files.atomic_directory`); only then
is it recorded, the track moved onto it, and the track's deployment switched to the
bare new base (which now holds what the adapter taught). Earlier bases are never
deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from honed.atomic_files import atomic_directory, recover_directory, writing
from honed.data.plan import read_jsonl
from honed.evaluation.scorers import reference

LOGIT_TOLERANCE = 1e-3  # largest |merged - (base + adapter)| logit difference accepted


class ConsolidationError(Exception):
    """Consolidation cannot be done or its check failed; the message says which."""


@dataclass
class Consolidated:
    """The new base and the evidence that it reproduces base + adapter."""

    version: int
    path: Path
    adapter_id: int
    max_logit_diff: float
    prompts_checked: int
    same_answers: int


def _check_prompts(workspace, adapter, limit: int = 32) -> list[dict]:
    """Chat records to compare on: the adapter's run's held-out split, else its training data."""
    run_dir = workspace.runs_dir / (adapter.run_id or "")
    for name in ("heldout.jsonl", "train.jsonl"):
        path = run_dir / name
        if path.is_file():
            records = [r for r in read_jsonl(path) if r.get("messages") and r["messages"][-1]["role"] == "assistant"]
            if records:
                return records[:limit]
    return [{"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]}]


def merge_adapter(base_path: str, adapter_path: str):
    """Base + adapter as one plain model: the base in full precision on the CPU (never
    merged into a quantized base), the adapter merged into its weights by peft."""
    import torch

    from honed.training.model_loading import load_base_model, with_adapter

    merged = with_adapter(load_base_model(base_path, torch.device("cpu")), adapter_path).merge_and_unload()
    merged.eval()
    return merged


def consolidate(workspace, store, track: str, description: str) -> Consolidated:
    """Merge ``track``'s deployed adapter into its base as the next base version."""
    import torch

    from honed.data.chat_encoding import encode_chat
    from honed.evaluation.exact_match import answer_budget, generate_answers
    from honed.training.model_loading import load_base_model, load_tokenizer, with_adapter

    adapter = store.deployed_adapter(track)
    if adapter is None:
        raise ConsolidationError(f"track {track!r} has no deployed adapter to consolidate")
    track_info = store.get_track(track)
    if adapter.base_version != track_info.base_version:
        raise ConsolidationError(f"adapter {adapter.id} was trained on base v{adapter.base_version}, but track "
                                 f"{track!r} is on v{track_info.base_version}")
    base_path = workspace.resolve_base_path(store, adapter.base_version)
    device = torch.device("cpu")  # full precision; merging is not where speed matters
    tokenizer = load_tokenizer(base_path)
    reference_model = with_adapter(load_base_model(base_path, device), adapter.path)
    reference_model.eval()
    merged = merge_adapter(base_path, adapter.path)

    records = _check_prompts(workspace, adapter)
    prompts = [r["messages"][:-1] for r in records]
    max_diff = 0.0
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([encode_chat(tokenizer, prompt, add_generation_prompt=True).input_ids])
            a = reference_model(input_ids=ids).logits
            b = merged(input_ids=ids).logits
            max_diff = max(max_diff, float((a - b).abs().max()))
    budget = answer_budget(tokenizer, [reference(r) for r in records])
    before = generate_answers(reference_model, tokenizer, prompts, max_new_tokens=budget)
    after = generate_answers(merged, tokenizer, prompts, max_new_tokens=budget)
    same = sum(x == y for x, y in zip(before, after))
    if max_diff > LOGIT_TOLERANCE or same != len(prompts):
        raise ConsolidationError(f"the merged model does not reproduce base + adapter: largest logit difference "
                                 f"{max_diff:.3g} (tolerance {LOGIT_TOLERANCE:g}), {same}/{len(prompts)} "
                                 "greedy answers the same; nothing was recorded")

    latest = store.get_base().version
    target = workspace.bases_dir / f"v{latest + 1}"
    # bases/vN is recorded by nobody (the store's latest is v{latest}): whatever is there
    # was left by a consolidation killed before it recorded it, and is replaced.
    recover_directory(target)
    with writing(target), atomic_directory(target) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    run = store.get_run(adapter.run_id) if adapter.run_id else None
    lineage = {"parent_base": adapter.base_version, "adapter": adapter.id, "adapter_name": adapter.name,
               "run": adapter.run_id, "datasets": run.dataset_ids if run else [], "track": track,
               "check": {"prompts": len(prompts), "max_logit_diff": max_diff, "same_greedy_answers": same}}
    version = store.add_base(str(target), description=description, parent_version=adapter.base_version,
                             lineage=lineage)
    if version != latest + 1:  # another consolidation won the race for the number
        raise ConsolidationError(f"base v{latest + 1} was recorded meanwhile; this one is v{version} at {target}")
    store.set_track_base(track, version)
    store.switch_deployment(track, None, action="consolidate",
                            reason=f"adapter {adapter.id} merged into base v{version}: {description}")
    from honed.registry.deployment import sync_pointer

    sync_pointer(workspace, store, track)
    return Consolidated(version, target, adapter.id, max_diff, len(prompts), same)
