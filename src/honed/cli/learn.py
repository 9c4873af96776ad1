"""``honed learn status|run-now|teach``: the continuous-learning loop from the command
line. Thin over :mod:`honed.learning`; none of them imports torch."""

from __future__ import annotations

from typing import Annotated

import typer

from honed.cli.common import JsonOpt, WorkspaceOpt, app, console, fail, open_store, print_json, workspace_from

learn_app = typer.Typer(help="The learning loop: experiences, teacher corrections, the trigger.",
                        no_args_is_help=True)
app.add_typer(learn_app, name="learn")

TrackOpt = Annotated[str | None, typer.Option(help="Track (default: every track for status, else settings' track).")]


@learn_app.command("status")
def learn_status(track: TrackOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Where each track's loop stands: experiences, corrections, the teacher, the trigger."""
    from honed.learning.trigger import learning_state

    ws = workspace_from(workspace)
    with open_store(ws) as store:
        names = [track] if track else [t.name for t in store.list_tracks()]
        states = [learning_state(ws, store, name) for name in names]
        recent = {s.track: store.list_teacher_answers(s.track, limit=5) for s in states}
    if as_json:
        print_json([{**s.summary(), "recent_teacher_answers": [
            {"experience_id": a.experience_id, "status": a.status, "reason": a.reason,
             "at": a.created_at} for a in recent[s.track]]} for s in states])
        return
    for s in states:
        mode = "on (the daemon runs it)" if s.enabled else "off (learn.enabled = false; 'honed learn run-now' works)"
        console.print(f"[bold]track {s.track}[/]: learning loop {mode}", highlight=False)
        console.print(f"  experiences not trained on: {s.open} ({s.good} good, {s.needs_improvement} need "
                      f"improvement, {s.unrated} unrated)", highlight=False)
        console.print(f"  ready to train: {s.ready} of {s.threshold} ({s.corrected_by_person} corrected by a person, "
                      f"{s.corrected_by_teacher} by the teacher)", highlight=False)
        console.print(f"  objective: {s.objective} ({s.objective_why}); {s.pairs} preference pairs (corrections "
                      f"of served outputs), {s.unpaired} unpaired judgements (thumbs, scores)", highlight=False,
                      soft_wrap=True)
        if s.excluded:
            console.print(f"  excluded from training: {s.excluded} ({s.set_aside} set aside by a batch; "
                          "'honed experiences include ID' offers one again)", highlight=False)
            for aside in s.set_aside_recent:
                console.print(f"    experience {aside['experience_id']} set aside: {aside['reason']}",
                              highlight=False, soft_wrap=True)
        teacher = s.teacher or "none (set learn.teacher.base_url and model)"
        console.print(f"  teacher: {teacher}; {s.awaiting_teacher} waiting for it, {s.teacher_given_up} given up; "
                      f"{s.teacher_calls_today} of {s.teacher_budget} calls used today", highlight=False,
                      soft_wrap=True)
        for a in recent[s.track]:
            if a.status != "accepted":
                console.print(f"    {a.created_at:%Y-%m-%d %H:%M:%S} experience {a.experience_id}: {a.status}: "
                              f"{a.reason}", highlight=False, soft_wrap=True)
        if s.in_flight:
            console.print(f"  in the queue: batch {s.in_flight['batch']} as job {s.in_flight['job']} "
                          f"({s.in_flight['state']})", highlight=False)
        if s.last_batch:
            b = s.last_batch
            console.print(f"  last batch: {b['batch']} ({b['experiences']} experiences, job {b['job']}, "
                          f"{'trained by ' + b['trained_run_id'] if b['trained_run_id'] else 'not trained yet'})",
                          highlight=False)
        console.print("  trigger: " + ("[green]would fire now[/]" if s.fires else f"not now: {s.why_not}"),
                      highlight=False, soft_wrap=True)


@learn_app.command("run-now")
def learn_run_now(
    track: TrackOpt = None,
    teacher: Annotated[bool, typer.Option("--teacher/--no-teacher",
                                          help="Ask the teacher first (within its daily budget).")] = True,
    workspace: WorkspaceOpt = None, as_json: JsonOpt = False,
) -> None:
    """Assemble a batch from what is ready and queue its job now (ignores threshold, cooldown, window)."""
    from honed.learning.trigger import LearnError, run_now

    ws = workspace_from(workspace)
    name = track or ws.settings.track
    with open_store(ws) as store:
        try:
            done, report = run_now(ws, store, name, teacher=teacher)
        except LearnError as exc:
            raise fail(str(exc)) from None
    if as_json:
        print_json({"batch": done.batch.id, "job": done.job_id, "dataset": done.dataset_id,
                    "objective": done.objective, "path": done.path, "provenance": done.provenance_path,
                    "counts": done.counts, "teacher": report.summary() if report else None})
        return
    if report is not None:
        console.print(_describe_pass(report), highlight=False, soft_wrap=True)
    c = done.counts
    if done.objective == "dpo":
        what = f"{c['pairs']} preference pairs ({c['person']} corrected by a person, {c['teacher']} by the teacher)"
    elif done.objective == "kto":
        what = (f"{c['desirable'] + c['undesirable']} unpaired judgements from {c['lessons']} experiences "
                f"({c['desirable']} desirable, {c['undesirable']} not)")
    else:
        what = (f"{c['lessons']} lessons ({c['person']} corrected by a person, {c['teacher']} by the teacher, "
                f"{c['good']} good)")
    console.print(f"track {name}: batch {done.batch.id} ({done.objective}) queued as job {done.job_id}: {what} "
                  f"and {c['replay']} replay lines; dataset {done.dataset_id}, provenance {done.provenance_path}",
                  highlight=False, soft_wrap=True)


@learn_app.command("teach")
def learn_teach(track: TrackOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Ask the teacher now to correct the worst experiences (batch size and daily budget apply)."""
    from honed.learning.curriculum import teacher_pass

    ws = workspace_from(workspace)
    name = track or ws.settings.track
    with open_store(ws) as store:
        store.require_track(name)
        report = teacher_pass(ws, store, name, force=True)
    if as_json:
        print_json(report.summary())
    else:
        console.print(_describe_pass(report), highlight=False, soft_wrap=True)


def _describe_pass(report) -> str:
    if report.skipped:
        return f"teacher: nothing asked: {report.skipped}"
    lines = [f"teacher: asked about {report.asked}: {report.accepted} accepted, {report.invalid} invalid, "
             f"{report.failed} failed"]
    lines += [f"  {reason}" for reason in report.reasons]
    return "\n".join(lines)
