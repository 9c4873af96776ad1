"""Which files an MCP client may make the server read.

A client (a model, an agent, anyone on the HTTP port with the token) names files for
``train_model``. Such a file must lie under the workspace or under one of ``[mcp]
allowed_dirs``, judged after symbolic links and ``..`` are resolved and before a byte
of it is read; anything else is refused with the rule and the setting that widens it.
Whether a refused path exists is never said.

What the server answers names workspace files by relative names (:mod:`honed.server_paths`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from honed.workspace import Workspace


class PathRefusedError(ValueError):
    """A path an MCP client gave is not one it may make the server read."""


def allowed_roots(workspace: Workspace) -> list[Path]:
    """The workspace and ``[mcp] allowed_dirs`` (relative ones from the workspace), resolved."""
    roots = [workspace.root.resolve()]
    for entry in workspace.settings.mcp.allowed_dirs:
        roots.append((workspace.root / Path(entry).expanduser()).resolve())
    return roots


def confined_path(workspace: Workspace, given: str) -> Path:
    """The file ``given`` names, resolved, when it lies under :func:`allowed_roots`;
    PathRefusedError naming the rule and the setting otherwise. Nothing is opened: a
    missing file is judged like any other, so a refusal tells nothing of what exists."""
    path = Path(given)
    if not path.is_absolute():
        raise PathRefusedError(f"dataset {given!r}: give a dataset id or an absolute path (the server's "
                               "working directory is not the client's)")
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a NUL byte, a loop of links
        raise PathRefusedError(f"path {given!r} cannot be used: {exc}") from None
    if any(resolved.is_relative_to(root) for root in allowed_roots(workspace)):
        return resolved
    through = ("" if resolved == Path(os.path.normpath(given))
               else " (it leads there through a symbolic link)")
    raise PathRefusedError(
        f"path {given} is outside the workspace and [mcp] allowed_dirs{through}; an MCP client may only give "
        "files under those: add its directory to [mcp] allowed_dirs in honed.toml, or move the file into "
        "the workspace (e.g. its inbox/)")
