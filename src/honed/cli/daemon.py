"""The daemon's commands: ``daemon`` (run, ``--detach``, ``stop``), ``queue`` (add, list,
show, move, remove), ``events``, ``pause|resume|stop|skip|cancel`` and ``status``.
Thin: each parses, calls :mod:`honed.daemon`'s library functions, and prints for people
or (``--json``) for machines. None of them imports torch.

Long because it is a list of thin commands, not logic.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
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
from honed.config import SettingsError, parse_assignments
from honed.states import Priority, allowed
from honed.store.serialize import control_result, plain

daemon_app = typer.Typer(help="Run the daemon that turns inbox files and queued jobs into training.",
                         invoke_without_command=True, no_args_is_help=False)
queue_app = typer.Typer(help="The job queue: add, list, show, move, remove.", no_args_is_help=True)
app.add_typer(daemon_app, name="daemon")
app.add_typer(queue_app, name="queue")

PriorityOpt = Annotated[str, typer.Option(help="high, normal or low (first in, first out within one).")]


# --- daemon ----------------------------------------------------------------------------


@daemon_app.callback()
def daemon(
    ctx: typer.Context,
    detach: Annotated[bool, typer.Option("--detach", help="Run in the background; logs go to logs/.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", hidden=True, help="Log to logs/ only.")] = False,
    serve: Annotated[bool, typer.Option("--serve", help="Also serve the HTTP API and web monitor "
                                        "(server.host and server.port), as 'honed serve' does.")] = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Run the daemon in the foreground (Ctrl-C stops it gracefully); 'honed daemon stop' stops it."""
    if ctx.invoked_subcommand is not None:
        return
    ws = workspace_from(workspace)
    from honed.daemon.lifecycle import setup_daemon_logging, start_detached
    from honed.daemon.lock import DaemonAlreadyRunning

    if detach:
        try:
            pid = start_detached(ws.root, ["--serve"] if serve else [])
        except RuntimeError as exc:
            raise fail(str(exc)) from None
        console.print(f"daemon started (pid {pid}); logs in {ws.logs_dir}; stop it with 'honed daemon stop'",
                      highlight=False)
        return
    from honed.daemon.supervisor import run_daemon

    setup_daemon_logging(ws.logs_dir, to_console=not quiet)
    if not quiet:
        err_console.print(f"honed daemon for {ws.root} (Ctrl-C stops it; the running job checkpoints first)",
                          highlight=False)
    server = _start_server(ws) if serve else None
    try:
        run_daemon(ws)
    except DaemonAlreadyRunning as exc:
        raise fail(str(exc)) from None
    finally:
        if server is not None:
            server.stop()


def _start_server(ws):
    """The API and monitor on a thread of the daemon's process; refused settings end the
    command before the daemon starts."""
    from honed.server import ServerConfigError, create_app
    from honed.server.background import BackgroundServer

    settings = ws.settings.server
    try:
        server = BackgroundServer(create_app(ws), settings.host, settings.port).start()
    except (ServerConfigError, OSError, RuntimeError) as exc:
        raise fail(f"cannot serve the API: {exc}") from None
    err_console.print(f"monitor and API at {server.url}/", highlight=False)
    return server


@daemon_app.command("stop")
def daemon_stop(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the trainer to checkpoint.")] = 600.0,
    workspace: WorkspaceOpt = None,
) -> None:
    """Stop the daemon gracefully: the running job checkpoints and goes back to the queue."""
    from honed.daemon.lifecycle import stop_daemon

    ws = workspace_from(workspace)
    try:
        pid = stop_daemon(ws.root, timeout)
    except (TimeoutError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    if pid is None:
        console.print(f"no daemon runs {ws.root}")
    else:
        console.print(f"daemon {pid} stopped")


@app.command()
def node(
    node_rank: Annotated[int, typer.Option("--node-rank", min=1, help="This machine's node rank: 1 .. "
                                           "train.nnodes - 1 (node 0 is the daemon's machine).")],
    workspace: WorkspaceOpt = None,
) -> None:
    """On every machine but the daemon's, same workspace: join the jobs of train.nnodes > 1 as they start.

    Ctrl-C or SIGTERM stops it, with this machine's processes of the running attempt (the daemon retries it)."""
    from honed.daemon.lifecycle import setup_daemon_logging
    from honed.daemon.node import run_node

    ws = workspace_from(workspace)
    setup_daemon_logging(ws.logs_dir / "nodes", to_console=True, name=f"node-{node_rank}")
    err_console.print(f"honed node {node_rank} for {ws.root}: joins the jobs that span machines (Ctrl-C stops it)",
                      highlight=False)
    run_node(ws.root, node_rank)


# --- queue -----------------------------------------------------------------------------


def _priority(value: str) -> Priority:
    if value not in set(Priority):
        raise fail(f"--priority {value!r}: allowed: {allowed(Priority)}")
    return Priority(value)


def _job_id(text: str | None) -> int | None:
    if text is None:
        return None
    digits = text.removeprefix("job-")
    if not digits.isdigit():
        raise fail(f"{text!r} is not a job id (a number, as 'honed queue list' shows)")
    return int(digits)


@queue_app.command("add")
def queue_add(
    datasets: Annotated[list[str], typer.Argument(help="Dataset ids, or JSONL files (added first).")],
    track: Annotated[str | None, typer.Option(help="Track to train (default: settings' track).")] = None,
    priority: PriorityOpt = "normal",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Setting for this job, e.g. train.lr=1e-3.")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a training job."""
    from honed.daemon.control import ControlError, queue_job

    ws = workspace_from(workspace)
    try:
        overrides = parse_assignments(set_ or [])
    except SettingsError as exc:
        raise fail(str(exc)) from None
    with open_store(ws) as store:
        try:
            job, added = queue_job(ws, store, datasets, track=track or ws.settings.track,
                                   priority=_priority(priority), overrides=overrides)
        except ControlError as exc:
            raise fail(str(exc)) from None
    if as_json:
        print_json(job)
        return
    for result in added:
        console.print(result.describe(), highlight=False, soft_wrap=True)
    console.print(f"queued job {job.id} (track {job.track}, priority {job.priority}, "
                  f"datasets {', '.join(map(str, job.dataset_ids))})", highlight=False)


@queue_app.command("list")
def queue_list(
    all_: Annotated[bool, typer.Option("--all", help="Also finished jobs.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Most jobs shown.")] = 100,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Jobs in the order the daemon takes them (running first)."""
    from honed.daemon.status import WAITING_STATES, job_summary

    ws = workspace_from(workspace)
    with open_store(ws) as store:
        jobs = store.list_jobs(states=None if all_ else ("running", "evaluating", *WAITING_STATES))
    order = {"running": 0, "evaluating": 0}
    jobs = sorted(jobs, key=lambda j: order.get(j.state, 1))[:limit]
    if as_json:
        print_json([job_summary(j) for j in jobs])
        return
    if not jobs:
        console.print("the queue is empty" + ("" if all_ else " (--all shows finished jobs)"))
        return
    table = Table("job", "state", "priority", "track", "datasets", "progress", "note")
    for job in jobs:
        table.add_row(str(job.id), job.state, job.priority, job.track, ", ".join(map(str, job.dataset_ids)),
                      _progress_text(job.progress) if job.state == "running" else "", _note(job))
    console.print(table)


def _note(job) -> str:
    if job.not_before and job.not_before > datetime.now(UTC):
        return f"retry after {job.not_before.astimezone():%H:%M:%S} ({job.failures} failed)"
    if job.error:
        return job.error.splitlines()[0][:80]
    return ""


def _progress_text(progress: dict | None) -> str:
    if not progress:
        return ""
    if progress.get("phase") != "training":
        return progress.get("phase", "")
    text = f"{progress['step']}/{progress['total_steps']}"
    if isinstance(progress.get("loss"), (int, float)):
        text += f"  loss {progress['loss']:.4f}"
    if progress.get("tokens_per_s"):
        text += f"  {progress['tokens_per_s']:,.0f} tok/s"
    if progress.get("eta_s") is not None:
        text += f"  ETA {_duration(progress['eta_s'])}"
    return text


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@queue_app.command("show")
def queue_show(job: Annotated[str, typer.Argument(help="Job id.")], workspace: WorkspaceOpt = None,
               as_json: JsonOpt = False) -> None:
    """One job in full, with its latest events."""
    ws = workspace_from(workspace)
    with open_store(ws) as store:
        info = store.get_job(_job_id(job))
        events = store.job_events(info.id)
    if as_json:
        print_json({**plain(info), "events": events})
        return
    for key in ("state", "track", "priority", "dataset_ids", "overrides", "source", "run_id", "failures",
                "error", "created_at", "started_at", "ended_at"):
        value = getattr(info, key)
        if value not in (None, {}, []):
            console.print(f"{key:<12} {value}", highlight=False, soft_wrap=True)
    if info.progress and info.state == "running":
        console.print(f"{'progress':<12} {_progress_text(info.progress)}", highlight=False)
    for event in events[-10:]:
        console.print(_event_line(event), highlight=False, soft_wrap=True)


@queue_app.command("move")
def queue_move(job: Annotated[str, typer.Argument(help="Job id.")],
               priority: Annotated[str, typer.Option(help="high, normal or low.")],
               workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Give a waiting job another priority."""
    ws = workspace_from(workspace)
    with open_store(ws) as store:
        info = store.set_job_priority(_job_id(job), _priority(priority))
    if as_json:
        print_json(info)
    else:
        console.print(f"job {info.id} now has priority {info.priority}")


@queue_app.command("remove")
def queue_remove(job: Annotated[str, typer.Argument(help="Job id.")], workspace: WorkspaceOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Take a job that is not running out of the queue (it is kept as cancelled)."""
    from honed.daemon.control import ControlError, remove_job

    ws = workspace_from(workspace)
    with open_store(ws) as store:
        try:
            info = remove_job(store, _job_id(job))
        except ControlError as exc:
            raise fail(str(exc)) from None
    if as_json:
        print_json(info)
    else:
        console.print(f"job {info.id} removed from the queue (kept as {info.state})")


# --- events ----------------------------------------------------------------------------


def _event_line(event) -> str:
    return f"{event.at.astimezone():%Y-%m-%d %H:%M:%S}  {event.kind:<14} {event.message}"


@app.command()
def events(
    job: Annotated[str, typer.Argument(help="Job id.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job finishes.")] = False,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A job's event log: queued, started, checkpoints, pauses, failed attempts, the end."""
    from honed.store.schema import JOB_FINAL_STATES

    ws = workspace_from(workspace)
    job_id = _job_id(job)
    last = 0
    with open_store(ws) as store:
        try:
            while True:
                state = store.get_job(job_id).state
                for event in store.job_events(job_id, after_id=last):
                    last = event.id
                    if as_json:
                        print(json.dumps(plain(event), default=str), flush=True)
                    else:
                        console.print(_event_line(event), highlight=False, soft_wrap=True)
                if not follow or state in JOB_FINAL_STATES:
                    break
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


# --- control ---------------------------------------------------------------------------


def _control(command: str, job: str | None, wait: float, workspace: Path | None, as_json: bool) -> None:
    from honed.daemon.control import ControlError, control_job

    ws = workspace_from(workspace)
    with open_store(ws) as store:  # an unknown job (NotFoundError) is reported, not a traceback
        try:
            result = control_job(ws, store, command, _job_id(job), wait_s=wait)
        except ControlError as exc:
            raise fail(str(exc)) from None
    if as_json:
        print_json(control_result(result))
    else:
        console.print(result.message, highlight=False, soft_wrap=True)
    if not result.reached and result.command.state == "done":
        raise typer.Exit(1)


JobArg = Annotated[str | None, typer.Argument(help="Job id (default: the running job).")]
WaitOpt = Annotated[float, typer.Option(min=0, help="Seconds to wait for the job to reach its new state.")]


@app.command()
def pause(job: JobArg = None, wait: WaitOpt = 300.0, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Checkpoint and stop training a job, freeing the accelerator; 'resume' continues it exactly."""
    _control("pause", job, wait, workspace, as_json)


@app.command()
def resume(job: JobArg = None, wait: WaitOpt = 300.0, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Put a paused or skipped job back in the queue; it continues from its checkpoint."""
    _control("resume", job, wait, workspace, as_json)


@app.command(name="stop")
def stop_job(job: JobArg = None, wait: WaitOpt = 300.0, workspace: WorkspaceOpt = None,
             as_json: JsonOpt = False) -> None:
    """End training now; the adapter as it is at this step is the run's result."""
    _control("stop", job, wait, workspace, as_json)


@app.command()
def skip(job: JobArg = None, wait: WaitOpt = 300.0, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Set a job aside (checkpoint kept) and go on with the next; 'resume' brings it back."""
    _control("skip", job, wait, workspace, as_json)


@app.command()
def cancel(job: JobArg = None, wait: WaitOpt = 300.0, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Drop a job: training ends, no result is kept."""
    _control("cancel", job, wait, workspace, as_json)


# --- status ----------------------------------------------------------------------------


@app.command()
def status(
    workspace: WorkspaceOpt = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every second until Ctrl-C.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The daemon, the running job (step, loss, tokens/s, ETA) and the queue. Fast: no torch."""
    from honed.daemon.status import status_info

    ws = workspace_from(workspace)
    with open_store(ws) as store:
        if as_json:
            print_json(status_info(ws, store))
            return
        if not watch:
            console.print(_render_status(status_info(ws, store)))
            return
        from rich.live import Live

        try:
            with Live(_render_status(status_info(ws, store)), console=console, refresh_per_second=4) as live:
                while True:
                    time.sleep(1.0)
                    live.update(_render_status(status_info(ws, store)))
        except KeyboardInterrupt:
            pass


@app.command()
def doctor(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Check the workspace, its store, daemon, bases, deployed adapters, disk, memory,
    packages, accelerator and server; each line ok, warn or fail with the fix. Exit
    status 0, 1 or 2 (ok, warn, fail), for monitoring. Reads only; no torch."""
    from rich.markup import escape

    from honed import doctor as checks

    findings = checks.diagnose(workspace)
    if as_json:
        print_json(checks.as_json(findings))
    else:
        table = Table(show_header=False, box=None, pad_edge=False)
        colour = {"ok": "green", "warn": "yellow", "fail": "bold red"}
        for f in findings:
            table.add_row(f"[{colour[f.level]}]{f.level}[/]", f.area, escape(f.message)
                          + (f"\n[dim]fix: {escape(f.fix)}[/]" if f.fix else ""))
        console.print(table)
    raise typer.Exit(checks.exit_status(findings))


@app.command()
def gc(workspace: WorkspaceOpt = None,
       dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would go; remove nothing.")] = False,
       yes: Annotated[bool, typer.Option("--yes", help="Also remove what you added: exports and the "
                                         "originals of ingested files.")] = False,
       as_json: JsonOpt = False) -> None:
    """Free disk by the [storage] policy: checkpoints of finished runs, weights of rejected
    and long-superseded adapters, leftovers of killed writes. Bases, the deployed adapter
    and the last deployments, manifests, metrics and store records always stay."""
    from rich.markup import escape

    from honed.retention import collect

    ws = workspace_from(workspace)
    with open_store(ws) as store:
        result = collect(ws, store, include_user=yes, dry_run=dry_run)
    if as_json:
        print_json(result.as_json())
        return
    done = result.removals if dry_run else result.removed
    verb = "would remove" if dry_run else "removed"
    for item in done:
        console.print(f"{verb} {escape(item.path)} ({item.bytes / 2**20:.1f} MiB): {escape(item.why)}", highlight=False)
    console.print(f"{verb} {len(done)} items, {sum(i.bytes for i in done) / 2**20:.1f} MiB")
    if result.kept_for_user:
        size = sum(i.bytes for i in result.kept_for_user) / 2**20
        console.print(f"kept {len(result.kept_for_user)} items you added ({size:.1f} MiB: exports, originals of "
                      "ingested files); 'honed gc --yes' removes them too")


def _render_status(info: dict):
    from rich.console import Group
    from rich.text import Text

    parts = [Text(f"workspace  {info['workspace']}"), Text(f"store      {info['store']}")]
    d = info["daemon"]
    if d["up"]:
        parts.append(Text.from_markup(f"daemon     [green]up[/] pid {d.get('pid')} on {d.get('host')} since "
                                      f"{d.get('since')}" + (f" - {d['activity']}" if d.get("activity") else "")))
    else:
        seen = f" (last seen {d['last_seen']}, {d['last_exit']})" if d.get("last_seen") else ""
        parts.append(Text.from_markup(f"daemon     [red]down[/]{seen}; start it with 'honed daemon'"))
    if info["stop_file"]:
        parts.append(Text.from_markup("[bold red]STOP file present: training halts at the next step[/]"))
    if info["base"]:
        parts.append(Text(f"base       v{info['base']['version']} ({info['base']['source']})"))
    parts.append(Text("tracks     " + ", ".join(
        f"{t['name']} (v{t['base_version']}, live: {t['deployed']['name'] if t['deployed'] else 'bare base'})"
        for t in info["tracks"])))
    parts.append(Text(f"datasets   {info['datasets']}"))
    for job in info["running"]:
        parts.append(Text.from_markup(f"[bold]running[/]    job {job['job']} (track {job['track']}, run {job['run']}) "
                                      f"{_progress_text(job.get('progress'))}"))
    if info["queue"]:
        table = Table("job", "state", "priority", "track", "datasets", "note", title="queue")
        for job in info["queue"]:
            note = f"retry at {job['retry_at']}" if job.get("retry_at") else job.get("error", "")
            table.add_row(str(job["job"]), job["state"], job["priority"], job["track"],
                          ", ".join(map(str, job["datasets"])), note[:60])
        parts.append(table)
    elif not info["running"]:
        parts.append(Text("queue      empty"))
    return Group(*parts)
