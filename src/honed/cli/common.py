"""What every ``honed`` command shares: the typer app, the consoles, the workspace and
``--json`` options, and how errors are printed. Kept apart from the commands so that
``honed.cli`` and the modules that add commands to it use one app object, whether the
CLI runs as ``honed`` or as ``python -m honed.cli``."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from honed.config import SettingsError, parse_assignments
from honed.workspace import Workspace, WorkspaceError, open_workspace

if TYPE_CHECKING:
    from honed.store import Store

app = typer.Typer(
    help="honed keeps a local language model learning: add data, train LoRA adapters, "
    "evaluate, deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace directory (default: HONED_WORKSPACE, "
                 "else the nearest honed.toml at or above the current directory)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as an error, on stderr: ``error: ...`` for people, or the HTTP
    API's error body ``{"error": "..."}`` when the command was asked for ``--json``;
    return the Exit to raise. Every command's errors come through here."""
    if json_requested():
        print(json.dumps({"error": message}), file=sys.stderr, flush=True)
    else:
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def json_requested() -> bool:
    """Whether this command line asked for ``--json``."""
    return "--json" in sys.argv[1:]


def print_json(value: Any) -> None:
    """Print ``value`` for machines as the HTTP API encodes it (:func:`honed.store.serialize.plain`:
    dataclasses and models as objects, times in ISO 8601, enums as their values,
    non-finite floats as "nan"/"inf"/"-inf", paths as strings)."""
    from honed.store.serialize import plain

    print(json.dumps(plain(value), indent=2, default=str), flush=True)


def workspace_from(path: Path | None, assignments: list[str] | None = None) -> Workspace:
    """Open the workspace (with ``--set`` assignments), or exit with the reason."""
    try:
        return open_workspace(path, parse_assignments(assignments or []))
    except (WorkspaceError, SettingsError) as exc:
        raise fail(str(exc)) from None


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@contextmanager
def open_store(workspace: Workspace) -> Iterator[Store]:
    """The workspace's store for one command; a StoreError inside ends the command with
    its message."""
    from honed.store import StoreError

    store = workspace.open_store()
    try:
        yield store
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
