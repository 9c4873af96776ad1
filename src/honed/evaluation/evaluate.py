"""Evaluate a candidate adapter against what is live: the deployed adapter of its track
(or the bare base when nothing is deployed, or when the deployed adapter belongs to an
older base), on the same eval sets with the same greedy, batched decoding.

Eval sets: ``heldout`` (the run's held-out split), ``regression`` (a fixed sample of
the data the live model learned from: guards against forgetting) and the user's sets from
``[eval] sets``. Each set is scored by its scorers; a sample of outputs is kept.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from honed.data.plan import read_jsonl
from honed.evaluation.scorers import contains, exact_match, function_score, json_scores, reference

GENERATION_SCORERS = ("exact_match", "contains", "json")


@dataclass
class EvalSet:
    """Records and how to judge them."""

    name: str
    records: list[dict]
    scorers: list[str]
    required_fields: list[str] = field(default_factory=list)


def _is_chat(record: dict) -> bool:
    messages = record.get("messages")
    return bool(messages) and messages[-1].get("role") == "assistant" and len(messages) > 1


def _sample(records: list[dict], n: int) -> list[dict]:
    if len(records) <= n:
        return records
    return random.Random(0).sample(records, n)  # the same sample every time: fair comparisons


def _regression_datasets(store, track: str, dataset_ids: list[int]) -> list:
    """What the live model already knows: the datasets of every run whose adapter was
    deployed on the track (rejected candidates taught it nothing); before any
    deployment, the track's earlier datasets."""
    mine = set(dataset_ids)
    learned = set()
    for adapter in store.list_adapters(track):
        if adapter.state in ("deployed", "retired") and adapter.run_id:
            run = store.get_run(adapter.run_id)
            learned.update(run.dataset_ids if run else ())
    first = min(mine) if mine else 0
    chosen = []
    for dataset in store.list_datasets(track):
        wanted = dataset.id in learned if learned else dataset.id < first
        if wanted and dataset.id not in mine and Path(dataset.stored_path).is_file():
            chosen.append(dataset)
    return chosen


def build_eval_sets(workspace, store, *, track: str, run_dir: Path, dataset_ids: list[int]) -> list[EvalSet]:
    """The sets a candidate of ``track`` trained on ``dataset_ids`` is judged on."""
    cfg = workspace.settings.eval
    sets = []
    heldout = list(read_jsonl(run_dir / "heldout.jsonl")) if (run_dir / "heldout.jsonl").exists() else []
    if heldout:
        sets.append(EvalSet("heldout", _sample(heldout, cfg.max_records), ["exact_match", "loss"]))
    if cfg.regression_records:
        pool = [r for d in _regression_datasets(store, track, dataset_ids) for r in read_jsonl(Path(d.stored_path))]
        if pool:
            sets.append(EvalSet("regression", _sample(pool, cfg.regression_records), ["exact_match", "loss"]))
    for user_set in workspace.settings.eval_sets_for(track):
        path = Path(user_set.path)
        path = path if path.is_absolute() else workspace.root / path
        from honed.evaluation.exact_match import load_records

        sets.append(EvalSet(user_set.name, _sample(load_records(path), cfg.max_records), list(user_set.scorers),
                            list(user_set.required_fields)))
    return sets


def score_sets(model, tokenizer, sets: list[EvalSet], workspace) -> dict:
    """``{set: {figure: value, "n": records, "samples": [...]}}`` for one model."""
    from honed.data.tokenization import TokenizedRecords
    from honed.evaluation.exact_match import answer_budget, generate_answers
    from honed.training.trainer import validation_loss

    cfg, train_cfg = workspace.settings.eval, workspace.settings.train
    results = {}
    for eval_set in sets:
        figures: dict = {"n": len(eval_set.records)}
        chat = [r for r in eval_set.records if _is_chat(r)]
        wants_generation = [s for s in eval_set.scorers if s in GENERATION_SCORERS or ":" in s]
        if wants_generation and chat:
            budget = answer_budget(tokenizer, [reference(r) for r in chat])
            short = all(s == "exact_match" for s in wants_generation)
            outputs = generate_answers(model, tokenizer, [r["messages"][:-1] for r in chat],
                                       max_new_tokens=min(cfg.max_new_tokens, budget) if short
                                       else cfg.max_new_tokens, batch_size=cfg.batch_size)
            for scorer in wants_generation:
                if scorer == "exact_match":
                    figures.update(exact_match(outputs, chat))
                elif scorer == "contains":
                    figures.update(contains(outputs, chat))
                elif scorer == "json":
                    figures.update(json_scores(outputs, chat, eval_set.required_fields))
                else:
                    figures.update(function_score(scorer, outputs, chat))
            figures["samples"] = [{"prompt": r["messages"][-2]["content"], "reference": reference(r), "output": o}
                                  for r, o in list(zip(chat, outputs))[:cfg.samples_kept]]
        if "loss" in eval_set.scorers:
            examples = TokenizedRecords(tokenizer, eval_set.records, train_cfg.max_seq_len, eval_set.name)
            loss = validation_loss(model, examples, train_cfg, tokenizer.pad_token_id)
            if loss is not None:
                figures["loss"] = loss
                figures["perplexity"] = math.exp(min(loss, 700.0))
        results[eval_set.name] = figures
    return results


def evaluate_candidate(workspace, store, *, track: str, base_path: str, base_version: int, candidate_path: Path,
                       run_dir: Path, dataset_ids: list[int]) -> dict:
    """Score the candidate and the baseline (deployed adapter, or bare base) on the
    track's eval sets; returns what the gates decide on."""
    from peft import PeftModel

    from honed.training.model_loading import load_base_model, load_tokenizer, pick_device

    sets = build_eval_sets(workspace, store, track=track, run_dir=run_dir, dataset_ids=dataset_ids)
    if not sets:
        return {"candidate": {}, "baseline": {}, "baseline_name": "nothing", "sets": {}}
    tokenizer = load_tokenizer(base_path)
    model = PeftModel.from_pretrained(load_base_model(base_path, pick_device()), str(candidate_path),
                                      adapter_name="candidate")
    model.eval()
    deployed = store.deployed_adapter(track)
    baseline_adapter = None
    if deployed is not None and deployed.base_version == base_version and Path(deployed.path).is_dir():
        model.load_adapter(deployed.path, adapter_name="deployed")
        baseline_adapter = deployed.id
    model.set_adapter("candidate")
    candidate = score_sets(model, tokenizer, sets, workspace)
    if baseline_adapter is not None:
        model.set_adapter("deployed")
        baseline = score_sets(model, tokenizer, sets, workspace)
        baseline_name = f"deployed adapter {baseline_adapter}"
    else:
        with model.disable_adapter():
            baseline = score_sets(model, tokenizer, sets, workspace)
        baseline_name = f"base v{base_version}"
    return {"candidate": candidate, "baseline": baseline, "baseline_name": baseline_name,
            "baseline_adapter": baseline_adapter,
            "sets": {s.name: {"records": len(s.records), "scorers": s.scorers} for s in sets}}
