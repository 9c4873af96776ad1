"""``honed experiences list|exclude|include|delete``: what applications logged and what
the model served, and keeping one out of training. Thin over the Store API."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from honed.cli.common import JsonOpt, WorkspaceOpt, app, console, open_store, print_json, workspace_from
from honed.store.serialize import deleted_experience

experiences_app = typer.Typer(help="Experiences: list them, exclude one from training, include it again, "
                                   "delete one.", no_args_is_help=True)
app.add_typer(experiences_app, name="experiences")

IdArg = Annotated[int, typer.Argument(help="The experience's id ('honed experiences list' shows them).", min=1)]


@experiences_app.command("list")
def list_experiences(
    track: Annotated[str | None, typer.Option(help="Only this track's experiences.")] = None,
    excluded: Annotated[bool | None, typer.Option(
        "--excluded/--included", help="Only those excluded from training (with their reason), or only the others "
        "(default: all).")] = None,
    set_aside: Annotated[bool, typer.Option(
        "--set-aside", help="Only those a batch set aside because they cannot be a training line.")] = False,
    untrained: Annotated[bool, typer.Option("--untrained", help="Only those no run trained on.")] = False,
    limit: Annotated[int, typer.Option(help="Most experiences shown, newest first.", min=1, max=10000)] = 50,
    workspace: WorkspaceOpt = None, as_json: JsonOpt = False,
) -> None:
    """Experiences, newest first, with their feedback, training and exclusion."""
    ws = workspace_from(workspace)
    with open_store(ws) as store:
        if track is not None:
            store.require_track(track)
        rows = store.list_experiences(track, untrained_only=untrained, limit=limit, excluded=excluded,
                                      set_aside=set_aside)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "track", "logged", "feedback", "trained by", "excluded")
    for e in rows:
        feedback = ", ".join(part for part in (
            f"score {e.score:g}" if e.score is not None else "", f"thumbs {e.thumbs}" if e.thumbs else "",
            "corrected" if e.corrected_output is not None else "") if part)
        table.add_row(str(e.id), e.track, str(e.created_at)[:19], feedback, e.trained_run_id or "",
                      e.excluded_reason or "")
    console.print(table)


@experiences_app.command("exclude")
def exclude(
    experience_id: IdArg,
    reason: Annotated[str, typer.Option(help="Why it must not be trained on (kept and listed with it).")],
    workspace: WorkspaceOpt = None, as_json: JsonOpt = False,
) -> None:
    """Keep an experience out of every training batch from now on; it stays listed with the reason."""
    ws = workspace_from(workspace)
    with open_store(ws) as store:
        experience = store.exclude_experience(experience_id, reason)
    if as_json:
        print_json(experience)
        return
    console.print(f"experience {experience.id} excluded from training: {experience.excluded_reason}",
                  highlight=False, soft_wrap=True)


@experiences_app.command("include")
def include(experience_id: IdArg, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Offer an excluded or set-aside experience to training again."""
    ws = workspace_from(workspace)
    with open_store(ws) as store:
        before = store.get_experience(experience_id)
        experience = store.include_experience(experience_id)
    if as_json:
        print_json(experience)
        return
    was = f"(was excluded: {before.excluded_reason})" if before.excluded_reason else "(it was not excluded)"
    console.print(f"experience {experience.id} is offered to training again {was}", highlight=False,
                  soft_wrap=True)


@experiences_app.command("delete")
def delete(experience_id: IdArg, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Delete an experience with its feedback and teacher answers (batches already made keep their record of it)."""
    ws = workspace_from(workspace)
    with open_store(ws) as store:
        gone = store.delete_experience(experience_id)
    if as_json:
        print_json(deleted_experience(gone))
        return
    note = f"; run {gone.trained_run_id} had trained on it" if gone.trained_run_id else ""
    console.print(f"experience {gone.id} deleted with its feedback{note}", highlight=False, soft_wrap=True)
