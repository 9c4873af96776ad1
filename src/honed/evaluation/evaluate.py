"""Evaluate a candidate adapter against what is live: the deployed adapter of its track
(or the bare base when nothing is deployed, or when the deployed adapter belongs to an
older base), on the same eval sets with the same greedy, batched decoding.

Eval sets: ``heldout`` (the run's held-out split), ``regression`` (a fixed sample of
the data the live model learned from: guards against forgetting), ``general`` (the prompts
of a small set shipped with honed that the bare base answers right), ``control`` (the
user's ``[eval] control_path``) and the user's sets from ``[eval] sets``. Each set is
scored by its scorers; a sample of outputs is kept, and each record's right/wrong outcome
per generation scorer, so the gates can pair candidate and baseline record by record.
With ``[eval] win_rate`` on, both also answer the prompts of ``win_rate_sets`` and a
decider compares the answers (:func:`compare_answers`, :mod:`honed.evaluation.win_rate`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from honed import faults
from honed.data.plan import read_jsonl
from honed.evaluation.scorers import (
    GENERAL_SET_SCORER,
    answer,
    contains,
    exact_match,
    function_score,
    json_scores,
    record_outcomes,
    reference,
)

log = logging.getLogger(__name__)

GENERATION_SCORERS = ("exact_match", "contains", "answer", "json")
GENERAL_SET = Path(__file__).parent / "control" / "general.jsonl"


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
    for dataset in store.list_datasets(track, kind="sft"):  # exact match needs reference answers
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
        # Pairs and thumbs (preference training) have no reference answer: only the win rate judges them.
        scorers = ["exact_match", "loss"] if all(_is_chat(r) for r in heldout) else []
        sets.append(EvalSet("heldout", _sample(heldout, cfg.max_records), scorers))
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
    if cfg.control_path:
        from honed.evaluation.exact_match import load_records

        path = Path(cfg.control_path)
        path = path if path.is_absolute() else workspace.root / path
        sets.append(EvalSet("control", _sample(load_records(path), cfg.max_records), ["exact_match"]))
    return sets


# A small base knows some facts only just: SmolLM2-135M answered 25 of the 40 right, and
# any adapter, even one trained on nothing but its own answers, flipped 6-9 of those. A
# prompt is kept only when the base answers it right however it is asked (as written,
# under a system prompt, with "Question:" before it): losing such an answer is forgetting.
ROBUSTNESS_RENDERINGS = (
    lambda messages: messages,
    lambda messages: [{"role": "system", "content": "You are a helpful assistant."}, *messages],
    lambda messages: [*messages[:-1], {**messages[-1], "content": "Question: " + messages[-1]["content"]}],
)


def general_control_set(model, tokenizer, workspace, base_version: int) -> tuple[EvalSet | None, dict]:
    """The records of the shipped general set that the bare base answers right in every
    one of ``ROBUSTNESS_RENDERINGS``, and how many of how many were kept. Worked out the
    first time a base version is evaluated and cached (``Workspace.base_cache_file``): a
    base's knowledge does not change, and a new shipped set (another hash) is worked out
    afresh."""
    from honed.atomic_files import write_json_atomically
    from honed.evaluation.exact_match import generate_answers, load_records

    records = load_records(GENERAL_SET)
    # The scorer is part of what was worked out: another scorer keeps other records.
    digest = hashlib.sha256(GENERAL_SET.read_bytes() + GENERAL_SET_SCORER.encode()
                            + str(len(ROBUSTNESS_RENDERINGS)).encode()).hexdigest()
    cache = workspace.base_cache_file(base_version, "honed_control.json")
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):
        cached = None
    if not isinstance(cached, dict) or cached.get("sha256") != digest:
        right = [1] * len(records)
        with model.disable_adapter():  # the bare base, whatever the baseline is
            for rendering in ROBUSTNESS_RENDERINGS:
                outputs = generate_answers(model, tokenizer, [rendering(r["messages"][:-1]) for r in records],
                                           max_new_tokens=min(workspace.settings.eval.max_new_tokens, 48),
                                           batch_size=workspace.settings.eval.batch_size)
                outcome = record_outcomes(GENERAL_SET_SCORER, outputs, records)[GENERAL_SET_SCORER]
                right = [a and b for a, b in zip(right, outcome)]
        cached = {"set": "general", "sha256": digest, "base_version": base_version, "of": len(records),
                  "kept": [r["id"] for r, ok in zip(records, right) if ok]}
        try:
            write_json_atomically(cache, cached)
        except OSError as exc:  # a read-only shared bases/: work it out again next time
            log.warning("general control set of base v%d not cached at %s: %s", base_version, cache, exc)
    kept = set(cached["kept"])
    info = {"kept": len(kept), "of": len(records), "cache": str(cache)}
    chosen = [r for r in records if r["id"] in kept]
    return (EvalSet("general", chosen, [GENERAL_SET_SCORER]) if chosen else None), info


def score_sets(model, tokenizer, sets: list[EvalSet], workspace) -> tuple[dict, dict]:
    """For one model: ``{set: {figure: value, "n": records, "samples": [...]}}`` and the
    per-record outcomes ``{set: {figure: [0 or 1 per chat record, in order]}}``."""
    from honed.data.tokenization import TokenizedRecords
    from honed.evaluation.exact_match import answer_budget, generate_answers
    from honed.training.trainer import validation_loss

    cfg, train_cfg = workspace.settings.eval, workspace.settings.train
    results, outcomes = {}, {}
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
                elif scorer == "answer":
                    figures.update(answer(outputs, chat))
                elif scorer == "json":
                    figures.update(json_scores(outputs, chat, eval_set.required_fields))
                else:
                    figures.update(function_score(scorer, outputs, chat))
                outcomes.setdefault(eval_set.name, {}).update(
                    record_outcomes(scorer, outputs, chat, eval_set.required_fields))
            figures["samples"] = [{"prompt": r["messages"][-2]["content"], "reference": reference(r), "output": o}
                                  for r, o in list(zip(chat, outputs))[:cfg.samples_kept]]
        if "loss" in eval_set.scorers:
            examples = TokenizedRecords(tokenizer, eval_set.records, train_cfg.max_seq_len, eval_set.name)
            loss = validation_loss(model, examples, train_cfg, tokenizer.pad_token_id)
            if loss is not None:
                figures["loss"] = loss
                figures["perplexity"] = math.exp(min(loss, 700.0))
        results[eval_set.name] = figures
    return results, outcomes


def evaluate_candidate(workspace, store, *, track: str, base_path: str, base_version: int, candidate_path: Path,
                       run_dir: Path, dataset_ids: list[int], general_control: bool = True) -> dict:
    """Score the candidate and the baseline (deployed adapter, or bare base) on the
    track's eval sets; returns what the gates decide on. ``general_control`` adds the
    shipped general set (what the bare base answers right) for the retention rule."""
    from honed.atomic_files import current_directory
    from honed.training.model_loading import load_base_model, load_tokenizer, pick_device, with_adapter

    sets = build_eval_sets(workspace, store, track=track, run_dir=run_dir, dataset_ids=dataset_ids)
    if not sets:
        return {"candidate": {}, "baseline": {}, "baseline_name": "nothing", "sets": {}}
    tokenizer = load_tokenizer(base_path)
    model = with_adapter(load_base_model(base_path, pick_device()), candidate_path, adapter_name="candidate")
    model.eval()
    control = {"control_path": workspace.settings.eval.control_path or None}
    if general_control:
        general, control["general"] = general_control_set(model, tokenizer, workspace, base_version)
        sets += [general] if general else []
    deployed = store.deployed_adapter(track)
    baseline_adapter = None
    deployed_path = current_directory(Path(deployed.path)) if deployed is not None else None
    if deployed is not None and deployed.base_version == base_version and deployed_path.is_dir():
        model.load_adapter(str(deployed_path), adapter_name="deployed")
        baseline_adapter = deployed.id
    model.set_adapter("candidate")
    candidate, candidate_outcomes = score_sets(model, tokenizer, sets, workspace)
    if baseline_adapter is not None:
        model.set_adapter("deployed")
        baseline, baseline_outcomes = score_sets(model, tokenizer, sets, workspace)
        baseline_name = f"deployed adapter {baseline_adapter}"
    else:
        with model.disable_adapter():
            baseline, baseline_outcomes = score_sets(model, tokenizer, sets, workspace)
        baseline_name = f"base v{base_version}"
    evaluation = {"candidate": candidate, "baseline": baseline, "baseline_name": baseline_name,
                  "baseline_adapter": baseline_adapter,
                  "sets": {s.name: {"records": len(s.records), "scorers": s.scorers} for s in sets},
                  "outcomes": {"candidate": candidate_outcomes, "baseline": baseline_outcomes}, "control": control}
    if workspace.settings.eval.win_rate != "off":
        evaluation["win_rate"] = compare_answers(model, tokenizer, sets, workspace, track, baseline_adapter)
    return evaluation


def _decider(mode: str, learn):
    """The decider of ``eval.win_rate`` for a track's learning settings, and its name."""
    from honed.evaluation.scorers import ScorerError
    from honed.evaluation.win_rate import both_orders, scorer_decider

    if mode == "scorer":
        if not learn.scorer:
            raise ScorerError("eval.win_rate = 'scorer' scores answers with the track's scorer: set learn.scorer")
        from honed.learning.judge import score_output

        return scorer_decider(lambda output, prompt: score_output(learn, output, prompt)), f"scorer {learn.scorer}"
    from honed.evaluation.llm_judge import TeacherJudge

    judge = TeacherJudge(learn)
    return both_orders(judge.ask), f"judge {judge.model} at {judge.base_url}"


def compare_answers(model, tokenizer, sets: list[EvalSet], workspace, track: str,
                    baseline_adapter: int | None) -> dict:
    """The candidate's win rate over the live model on each set of ``eval.win_rate_sets``:
    both answer every distinct prompt of the set (the same greedy decoding), and the
    decider of ``eval.win_rate`` compares them. ``{"decider", "sets": {set: figures}}``;
    a decider that cannot be used, or a judge never reached, is an ``error`` instead."""
    from honed.evaluation.exact_match import GREEDY, Sampling, generate_answers
    from honed.evaluation.scorers import ScorerError
    from honed.evaluation.win_rate import JudgeUnavailable, distinct_prompts, win_rate_over_samples

    cfg = workspace.settings.eval
    try:
        decide, decider = _decider(cfg.win_rate, workspace.settings.learn_for(track))
    except (ScorerError, JudgeUnavailable) as exc:
        return {"decider": cfg.win_rate, "error": str(exc), "sets": {}}
    # Round k of both models is drawn with the same seed: their differences are the models'.
    rounds = [GREEDY] if cfg.win_rate_temperature == 0 else [
        Sampling(cfg.win_rate_temperature, 1.0, seed=k) for k in range(cfg.win_rate_samples)]

    def answers(prompts) -> list[list[str]]:
        return [generate_answers(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                                 batch_size=cfg.batch_size, sampling=sampling) for sampling in rounds]

    figures: dict = {}
    for eval_set in sets:
        prompts = distinct_prompts(eval_set.records) if eval_set.name in cfg.win_rate_sets else []
        if not prompts:
            continue
        model.set_adapter("candidate")
        candidate = answers(prompts)
        if baseline_adapter is not None:
            model.set_adapter("deployed")
            live = answers(prompts)
        else:
            with model.disable_adapter():
                live = answers(prompts)
        try:
            result = win_rate_over_samples(candidate, live, prompts, decide, cfg.samples_kept)
        except ScorerError as exc:
            figures[eval_set.name] = {"error": str(exc)}
            continue
        figures[eval_set.name] = {**result.as_dict(), "temperature": cfg.win_rate_temperature,
                                  "rounds": len(rounds)}
        asked = result.n - result.notes.get("identical", 0)
        if asked and result.notes.get("failed", 0) == asked:  # nothing was judged: not a figure
            figures[eval_set.name]["error"] = f"the judge was never reached: {result.failure}"
    return {"decider": decider, "sets": figures}


def evaluate_and_gate(workspace, store, job, run, base_path: str, fence: int | None = None):
    """Register ``run``'s adapter as a candidate of ``job``, score it against what is
    live, and record the gates' verdict (the adapter's state follows from it; the daemon
    deploys, or not, from there). Each write carries ``fence``. Returns the adapter."""
    from honed.evaluation.gates import adapter_state, decide

    store.report_progress(job.id, {"phase": "evaluating"}, fence=fence)
    store.mark_job_evaluating(job.id, f"run {run.id} ended {run.status}; scoring its adapter", fence=fence)
    adapter = store.adapter_for_run(run.id) or store.add_adapter(
        track=job.track, run_id=run.id, job_id=job.id, base_version=run.base_version, path=run.adapter_path,
        fence=fence)
    faults.point("eval.registered")
    if adapter.state != "candidate" or adapter.verdict is not None:
        return adapter  # evaluated already
    gates = workspace.settings.gates_for(job.track)
    evaluation = evaluate_candidate(workspace, store, track=job.track, base_path=base_path,
                                    base_version=run.base_version, candidate_path=Path(run.adapter_path),
                                    run_dir=workspace.runs_dir / run.id, dataset_ids=run.dataset_ids,
                                    general_control=any(r.kind == "retention" for r in gates.rules))
    verdict = decide(evaluation, gates.rules, gates.require_approval)
    faults.point("eval.scored")
    adapter = store.record_evaluation(adapter.id, evaluation, verdict, adapter_state(verdict), fence=fence)
    faults.point("eval.recorded")
    outcome = "failed" if verdict["failed"] else "was held by" if verdict["held"] else "passed"
    summary = "; ".join(f"{r['rule']}: {r['detail']}" for r in verdict["rules"] if not r.get("skipped"))
    report_to = run.config.get("train", {}).get("report_to") or []
    if report_to:
        report_verdict(workspace, run, adapter, evaluation, f"{outcome} ({summary})" if summary else outcome)
    store.add_job_event(job.id, "evaluated", f"adapter {adapter.id} {outcome} its gates against "
                        f"{evaluation['baseline_name']} ({summary})",
                        {"adapter": adapter.id, "passed": verdict["passed"], "held": bool(verdict["held"])},
                        fence=fence)
    return adapter


def report_verdict(workspace, run, adapter, evaluation: dict, verdict_text: str) -> None:
    """Give the run's trackers (``train.report_to``) the evaluation: each eval set's figures
    for the candidate and the baseline at the run's last step, the verdict and the adapter."""
    from honed.telemetry.trackers import TrackedRun, report_after_training, resolve_report_settings

    report = resolve_report_settings(workspace.settings.report, workspace.root, workspace.artifacts_dir)
    verdict = adapter.verdict or {}
    figures = {f"gate/{side}/{set_name}/{name}": value for side in ("candidate", "baseline")
               for set_name, set_figures in evaluation.get(side, {}).items() for name, value in set_figures.items()}
    figures.update({"gate/passed": int(bool(verdict.get("passed"))), "gate/held": int(bool(verdict.get("held")))})
    report_after_training(
        run.config["train"]["report_to"], TrackedRun(run.id, run.track, workspace.runs_dir / run.id, report),
        (run.final_metrics or {}).get("step", 0), figures,
        {"verdict": verdict_text, "gate/baseline": evaluation.get("baseline_name", ""),
         "adapter_id": str(adapter.id), "adapter_path": adapter.path or ""})
