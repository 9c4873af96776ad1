"""``honed export`` and ``honed exports``: thin over :mod:`honed.registry.export`; only
``export`` imports torch, and only for the merged and GGUF formats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from honed.cli.common import JsonOpt, WorkspaceOpt, app, console, fail, open_store, print_json, workspace_from


@app.command("export")
def export_command(
    target: Annotated[str, typer.Argument(help="An adapter (7, a7, main-a7), track:NAME (its deployed adapter) "
                                          "or base:N (a base version).")],
    fmt: Annotated[str, typer.Option("--format", help="merged (safetensors + tokenizer), gguf (one file + an "
                                     "Ollama Modelfile) or peft (the adapter directory).")],
    quant: Annotated[str | None, typer.Option("--quant", help="GGUF weights: f16 (default) or q8_0.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Directory to create (must not exist; default: "
                                             "exports/LABEL-FORMAT in the workspace).")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write an adapter, a track's deployed adapter or a base version for another engine,
    atomically, with a manifest (export.json)."""
    from honed.registry.export import ExportError, export

    ws = workspace_from(workspace)
    with open_store(ws) as store, console.status(f"exporting {target} as {fmt}"):
        try:
            done = export(ws, store, target, fmt, quant, out)
        except ExportError as exc:
            raise fail(str(exc)) from None
    if as_json:
        print_json({"path": str(done.path), **done.manifest})
        return
    size = sum(f["bytes"] for f in done.manifest["files"].values())
    quantized = f" {done.manifest['quantization']}" if done.manifest["quantization"] else ""
    console.print(f"{done.manifest['label']} exported as {fmt}{quantized} to {done.path} "
                  f"({size / 1e6:.1f} MB, {done.manifest['seconds']:.1f} s)", highlight=False, soft_wrap=True)
    modelfile = done.manifest.get("modelfile")
    if modelfile:
        console.print(f"ollama create {done.manifest['label']} -f {done.path / 'Modelfile'}", highlight=False,
                      soft_wrap=True)
        if modelfile["note"]:
            console.print(f"[yellow]note:[/] {modelfile['note']}", highlight=False, soft_wrap=True)


@app.command("exports")
def exports_command(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Exports made from this workspace, oldest first (read from their manifests)."""
    from honed.registry.export import list_exports

    rows = list_exports(workspace_from(workspace))
    if as_json:
        print_json(rows)
        return
    table = Table("created", "source", "base", "format", "size")
    table.add_column("path", overflow="fold")  # the one thing a user copies from this table
    for r in rows:
        if not r["present"]:
            table.add_row("", "[red]missing[/]", "", "", "", r["path"])
            continue
        size = sum(f["bytes"] for f in r["files"].values()) / 1e6
        fmt = r["format"] + (f" {r['quantization']}" if r["quantization"] else "")
        created = r["created_at"][:16].replace("T", " ")
        table.add_row(created, r["label"], f"v{r['base']['version']}", fmt, f"{size:.1f} MB", r["path"])
    console.print(table)
