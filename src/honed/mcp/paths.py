"""Server paths and MCP clients: which files a client may make the server read, and
server paths taken out of what it answers.

A client (a model, an agent, anyone on the HTTP port with the token) names files for
``train_model``. Such a file must lie under the workspace or under one of ``[mcp]
allowed_dirs``, judged after symbolic links and ``..`` are resolved and before a byte
of it is read; anything else is refused with the rule and the setting that widens it.
Whether a refused path exists is never said.

Answers name files inside the workspace (or its artifacts directory) by their
workspace-relative names: the client needs the name, not the server's layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class PathRefusedError(ValueError):
    """A path an MCP client gave is not one it may make the server read."""


def allowed_roots(workspace) -> list[Path]:
    """The workspace and ``[mcp] allowed_dirs`` (relative ones from the workspace), resolved."""
    roots = [workspace.root.resolve()]
    for entry in workspace.settings.mcp.allowed_dirs:
        roots.append((workspace.root / Path(entry).expanduser()).resolve())
    return roots


def confined_path(workspace, given: str) -> Path:
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


class ServerPaths:
    """Rewrites server paths under the workspace or its artifacts directory, wherever
    they appear in an answer (a field, a message, a URL), as workspace-relative names."""

    def __init__(self, workspace) -> None:
        prefixes = {str(p) for root in (workspace.root, workspace.artifacts_dir) for p in (root, root.resolve())}
        # Longest first: the artifacts directory may lie inside the workspace.
        self.prefixes = sorted(prefixes, key=len, reverse=True)

    def text(self, text: str) -> str:
        """``text`` with each server path in it made relative ("." for a root itself)."""
        for prefix in self.prefixes:
            if prefix in text:
                text = text.replace(prefix + os.sep, "")
                if text == prefix:
                    text = "."
        return text

    def answer(self, value: Any) -> Any:
        """``value`` (plain JSON-ready data) with :meth:`text` applied to every string."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.answer(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.answer(v) for v in value]
        return value
