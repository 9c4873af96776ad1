"""``honed train``: add the given files, plan a run, train it now in this process, and
score exact match before and after when an eval file is given."""

from __future__ import annotations

from pathlib import Path

from honed.data.datasets import add_dataset_file
from honed.data.plan import PlanError
from honed.data.tokenization import TokenizationError
from honed.training.runs import RunError, prepare_run, resume_spec

KNOWN_ERRORS = (RunError, PlanError, TokenizationError, FileNotFoundError, ValueError)


def _dataset_ids(ws, store, datasets: list[str], track: str) -> list[int]:
    ids = []
    for item in datasets:
        if item.isdigit() and not Path(item).exists():
            ids.append(int(item))
            continue
        added = add_dataset_file(ws, store, Path(item), track=track, mode=ws.settings.ingest.mode)
        if not added.accepted:
            raise RunError(added.describe())
        ids.append(added.dataset.id)
    return ids


def score_exact_match(base: str, adapter: Path | None, eval_file: Path) -> float:
    """Exact match of the base (or base + adapter) on a chat JSONL file."""
    from honed.evaluation.exact_match import exact_match, load_records
    from honed.training.model_loading import load_base_model, load_tokenizer, pick_device, with_adapter

    tokenizer = load_tokenizer(base)
    model = load_base_model(base, pick_device())
    if adapter is not None:
        model = with_adapter(model, adapter)
    model.eval()
    return exact_match(model, tokenizer, load_records(eval_file))


def check_trainable_here(train) -> None:
    """Refuse, before anything is planned or loaded, settings this process cannot train:
    several processes (the daemon runs those under torchrun) or 4-bit without CUDA."""
    from honed.training.model_loading import check_training_support, pick_device

    if train.world_size > 1:
        raise RunError(f"train.nproc = {train.nproc}, train.nnodes = {train.nnodes}: 'honed train' trains in "
                       "this one process; queue the "
                       "data for the daemon instead ('honed queue add DATASET --set train.nproc=N'), which "
                       "runs the job under torchrun, or set train.nproc = 1")
    check_training_support(train, pick_device())


def train_once(ws, store, *, datasets: list[str], eval_file: Path | None, base_version: int | None,
               resume: str | None, out: Path | None, track: str, control=None, on_step=None,
               on_message=None) -> dict:
    """The one-shot path; returns a summary (status, run, adapter, metrics, scores)."""
    say = on_message or (lambda text: None)
    if eval_file is not None and not Path(eval_file).is_file():
        raise FileNotFoundError(f"--eval {eval_file}: no such file")
    if resume:
        spec = resume_spec(ws, store, resume)
        check_trainable_here(spec.train)
    else:
        check_trainable_here(ws.settings.train)
        ids = _dataset_ids(ws, store, datasets, track)
        spec = prepare_run(ws, store, ids, track=track, adapter_out=out, base_version=base_version)
        for note in store.get_run(spec.run_id).config["plan"].get("notes", []):
            say(note)
    summary: dict = {"run": spec.run_id}
    if eval_file is not None:
        summary["exact_match_before"] = score_exact_match(spec.base, None, eval_file)
        say(f"exact match before training: {summary['exact_match_before']:.1%} on {eval_file}")
    from honed.training.recipe import run_attempt_of

    outcome = run_attempt_of(spec, store, control=control, on_step=on_step, mark_trained=True)
    summary.update(status=outcome.status, step=outcome.step, total_steps=outcome.total_steps,
                   attempt=outcome.attempt, final_metrics=outcome.final_metrics, error=outcome.error,
                   adapter=str(outcome.adapter_path) if outcome.adapter_path else None,
                   manifest=str(spec.run_dir / "manifest.json"))
    if eval_file is not None and outcome.adapter_path is not None:
        summary["exact_match_after"] = score_exact_match(spec.base, outcome.adapter_path, eval_file)
        if spec.train.report_to:
            from honed.telemetry.trackers import TrackedRun, report_after_training

            report_after_training(spec.train.report_to, TrackedRun(spec.run_id, spec.track, spec.run_dir, spec.report),
                                  outcome.step, {"exact_match/before": summary["exact_match_before"],
                                                 "exact_match/after": summary["exact_match_after"]},
                                  {"eval_file": str(eval_file)})
    return summary
