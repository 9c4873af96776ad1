"""Adapters, deployments, tracks and bases from the command line: ``adapters list|show``,
``deploy``, ``approve``, ``reject``, ``rollback``, ``track add|list``, ``consolidate`` and
``base add|list``. Thin over :mod:`honed.registry`; only ``consolidate`` and ``base add``
import torch."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from honed.cli.common import (
    JsonOpt,
    WorkspaceOpt,
    app,
    console,
    err_console,
    fail,
    open_store,
    print_json,
    workspace_from,
)
from honed.store.serialize import deploy_result, plain

adapters_app = typer.Typer(help="Adapters the runs produced, with their evaluation and verdict.",
                           no_args_is_help=True)
track_app = typer.Typer(help="Tracks: named lines of adapters, each with its own deployment.", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")
base_app = typer.Typer(help="Base versions: what adapters are trained on, with lineage.", no_args_is_help=True)
app.add_typer(track_app, name="track")
app.add_typer(base_app, name="base")

TrackOpt = Annotated[str | None, typer.Option(help="Track (default: settings' track).")]


def _report(result, as_json: bool) -> None:
    if as_json:
        print_json(deploy_result(result))
    else:
        live = f"adapter {result.adapter.id} ({result.adapter.name})" if result.adapter else "the bare base"
        console.print(f"track {result.deployment.track}: {live} is live ({result.deployment.action}); "
                      f"pointer {result.pointer / 'current'}", highlight=False, soft_wrap=True)
        for hook in result.hooks:
            style = "green" if hook["ok"] else "bold red"
            console.print(f"  hook {hook['hook']}: [{style}]{'ok' if hook['ok'] else 'FAILED'}[/] {hook['detail']}",
                          highlight=False, soft_wrap=True)
    if not result.hooks_ok:
        err_console.print("the switch happened, but a deploy hook failed (see above)")
        raise typer.Exit(2)


def _switch(workspace, action, *args, as_json: bool = False, **kwargs) -> None:
    from honed.registry.deployment import DeployError

    ws = workspace_from(workspace)
    with open_store(ws) as store:
        try:
            result = action(ws, store, *args, **kwargs)
        except DeployError as exc:
            raise fail(str(exc)) from None
    _report(result, as_json)


@adapters_app.command("list")
def adapters_list(track: TrackOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Adapters, newest first, with state and the figures that decided their verdict."""
    ws = workspace_from(workspace)
    with open_store(ws) as store:
        rows = store.list_adapters(track)
    if as_json:
        print_json(rows)
        return
    table = Table("adapter", "name", "track", "state", "run", "verdict")
    for a in rows:
        verdict = a.verdict or {}
        summary = ("passed" if verdict.get("passed") else "failed: " + "; ".join(verdict["failed"])
                   if verdict.get("failed") else "held: " + "; ".join(verdict.get("held", []))) if verdict else ""
        summary = "; ".join(filter(None, [_win_rate_cell(verdict), summary]))
        table.add_row(str(a.id), a.name, a.track, a.state, a.run_id or "", summary[:70])
    console.print(table)


def _win_rate_cell(verdict: dict, every_set: bool = False) -> str:
    """The win rate of a verdict in a few words: ``win rate 0.62 on heldout (p=0.01)``."""
    measured = verdict.get("win_rate") or {}
    if measured.get("error"):
        return f"win rate not measured: {measured['error']}"
    parts = []
    for name, f in measured.get("sets", {}).items():
        if f.get("error"):
            parts.append(f"win rate not measured on {name}: {f['error']}")
        elif f.get("rate") is not None:
            detail = f" ({f['wins']} won, {f['losses']} lost, {f['ties']} tied, p={f['p']:.2g})" if every_set else \
                f" (p={f['p']:.2g})"
            parts.append(f"win rate {f['rate']:.2f} on {name}{detail}")
        if not every_set:
            break
    suffix = f" by {measured.get('decider')}" if every_set and parts else ""
    return "; ".join(parts) + suffix


@adapters_app.command("show")
def adapters_show(adapter: Annotated[int, typer.Argument(help="Adapter id.")], workspace: WorkspaceOpt = None,
                  as_json: JsonOpt = False) -> None:
    """One adapter with its evaluation, verdict and deployment history."""
    ws = workspace_from(workspace)
    with open_store(ws) as store:
        info = store.get_adapter(adapter)
        history = [d for d in store.list_deployments(info.track) if adapter in (d.adapter_id, d.previous_adapter_id)]
    if as_json:
        print_json({**plain(info), "deployments": history})
        return
    for key in ("name", "track", "state", "run_id", "job_id", "base_version", "path"):
        console.print(f"{key:<13} {getattr(info, key)}", highlight=False)
    if info.verdict:
        word = "passed" if info.verdict.get("passed") else "failed" if info.verdict.get("failed") else "held"
        console.print(f"{'verdict':<13} {word}", highlight=False)
        for rule in info.verdict.get("rules", []):
            mark = "ok  " if rule["ok"] else "HELD" if rule.get("held") else "FAIL"
            console.print(f"  {mark} {rule['rule']}: {rule['detail']}", highlight=False)
        if info.verdict.get("win_rate"):
            console.print(f"{'win rate':<13} {_win_rate_cell(info.verdict, every_set=True)}", highlight=False)
    for d in history:
        console.print(f"{d.at:%Y-%m-%d %H:%M:%S}  {d.action:<9} -> "
                      f"{d.adapter_id if d.adapter_id is not None else 'base'}  {d.reason}", highlight=False)


@app.command()
def deploy(adapter: Annotated[int, typer.Argument(help="Adapter id.")],
           force: Annotated[bool, typer.Option("--force", help="Deploy even without a passing verdict.")] = False,
           workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Make an adapter live on its track (atomically; the hooks run after the switch)."""
    from honed.registry.deployment import deploy as deploy_adapter

    _switch(workspace, deploy_adapter, adapter, force=force, as_json=as_json)


@app.command()
def approve(adapter: Annotated[int, typer.Argument(help="Adapter id.")], workspace: WorkspaceOpt = None,
            as_json: JsonOpt = False) -> None:
    """Approve an adapter that awaits approval: it is deployed."""
    from honed.registry.deployment import approve as approve_adapter

    _switch(workspace, approve_adapter, adapter, as_json=as_json)


@app.command()
def reject(adapter: Annotated[int, typer.Argument(help="Adapter id.")], workspace: WorkspaceOpt = None,
           as_json: JsonOpt = False) -> None:
    """Reject an adapter that awaits approval (it is kept, with its numbers)."""
    ws = workspace_from(workspace)
    with open_store(ws) as store:
        info = store.reject_adapter(adapter)
    if as_json:
        print_json(info)
    else:
        console.print(f"adapter {info.id}: {info.state}")


@app.command()
def rollback(track: TrackOpt = None,
             to: Annotated[int | None, typer.Option("--to", help="An adapter deployed before.")] = None,
             workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Go back to the adapter deployed before the current one (again: further back)."""
    from honed.registry.deployment import rollback as rollback_track

    ws = workspace_from(workspace)
    _switch(workspace, rollback_track, track or ws.settings.track, to, as_json=as_json)


@track_app.command("add")
def track_add(name: Annotated[str, typer.Argument(help="Track name (letters, digits, - and _).")],
              base: Annotated[int | None, typer.Option(help="Base version (default: the newest).")] = None,
              workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Add a track: its own datasets (inbox/NAME/), jobs and deployment."""
    from honed.registry.tracks import TrackError, add_track

    ws = workspace_from(workspace)
    with open_store(ws) as store:
        try:
            info = add_track(ws, store, name, base)
        except TrackError as exc:
            raise fail(str(exc)) from None
    if as_json:
        print_json({"name": info.name, "base_version": info.base_version})
    else:
        console.print(f"track {info.name} on base v{info.base_version}; drop its data in {ws.inbox / name}",
                      highlight=False)


@track_app.command("list")
def track_list(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Tracks with their base version and the adapter deployed on each."""
    ws = workspace_from(workspace)
    with open_store(ws) as store:
        rows = [(t, store.deployed_adapter(t.name)) for t in store.list_tracks()]
    if as_json:
        print_json([{"name": t.name, "base_version": t.base_version, "deployed": a.id if a else None}
                    for t, a in rows])
        return
    table = Table("track", "base", "deployed")
    for t, a in rows:
        table.add_row(t.name, f"v{t.base_version}", f"{a.id} ({a.name})" if a else "bare base")
    console.print(table)


@app.command()
def consolidate(track: TrackOpt = None,
                description: Annotated[str, typer.Option(help="What this base version is, for its lineage.")] = "",
                workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Merge the track's deployed adapter into its base as the next base version (checked
    to reproduce base + adapter first); the track then trains on the new base."""
    from honed.registry.consolidation import ConsolidationError
    from honed.registry.consolidation import consolidate as consolidate_track

    if not description.strip():
        raise fail("--description is required: say what this base version is (it is kept in its lineage)")
    ws = workspace_from(workspace)
    with open_store(ws) as store, console.status("merging and checking the merged model"):
        try:
            done = consolidate_track(ws, store, track or ws.settings.track, description)
        except ConsolidationError as exc:
            raise fail(str(exc)) from None
    if as_json:
        print_json(done)
        return
    console.print(f"base v{done.version} written to {done.path}: adapter {done.adapter_id} merged; "
                  f"{done.same_answers}/{done.prompts_checked} greedy answers identical, largest logit "
                  f"difference {done.max_logit_diff:.2g}", highlight=False, soft_wrap=True)


@base_app.command("add")
def base_add(base: Annotated[str, typer.Argument(help="A .gguf file, or 'smollm2' (SmolLM2-135M-Instruct).")],
             description: Annotated[str, typer.Option(
                 help="What this base version is (default: the file's name).")] = "",
             track: Annotated[str | None, typer.Option(help="Also move this track onto the new base.")] = None,
             workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Convert a GGUF file (once, cached) and add it as the next base version."""
    from honed.registry.bases import BaseAddError, add_gguf_base

    ws = workspace_from(workspace)
    with open_store(ws) as store, console.status(f"converting {base} (once per file; SmolLM2 takes about 40 s)"):
        try:
            added = add_gguf_base(ws, store, base, description, track)
        except BaseAddError as exc:
            raise fail(str(exc)) from None
    if as_json:
        print_json(added)
        return
    console.print(f"base v{added.version} at {added.path}: {added.lineage['architecture']} from {added.source} "
                  f"(sha256 {added.lineage['sha256'][:12]})", highlight=False, soft_wrap=True)
    if added.track:
        console.print(f"track {added.track} now trains on base v{added.version}", highlight=False)
    else:
        console.print(f"no track moved; 'honed track add NAME --base {added.version}' starts a track on it",
                      highlight=False, soft_wrap=True)


@base_app.command("list")
def base_list(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Base versions, oldest first, with their source and lineage."""
    ws = workspace_from(workspace)
    with open_store(ws) as store:
        rows = store.list_bases()
        tracks = store.list_tracks()
    if as_json:
        print_json(rows)
        return
    table = Table("base", "source", "description", "sha256", "tracks", "created")
    for b in rows:
        on = ", ".join(t.name for t in tracks if t.base_version == b.version)
        table.add_row(f"v{b.version}", b.source, b.description, (b.lineage.get("sha256") or "")[:12], on,
                      f"{b.created_at:%Y-%m-%d %H:%M}")
    console.print(table)
