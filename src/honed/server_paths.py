"""Server paths stay on the server: what honed answers a client (over HTTP or MCP) names
workspace files by workspace-relative names, never by where the workspace lies.

Routes and tools leave out the fields that are paths and name things by id; what
remains is free text that may quote a path (a job's error, an event, an ingest report, a
hook's output, a run's manifest). :class:`PathHider` rewrites it: the workspace's
directories become workspace-relative names (``/srv/ws/adapters/a3`` → ``adapters/a3``),
a local base directory its name and the home directory ``~``. The CLI, which runs on the
server, still prints full paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from honed.workspace import looks_local

if TYPE_CHECKING:
    from honed.store import Store
    from honed.workspace import Workspace


def public_status(workspace: Workspace, store: Store, status: dict[str, Any]) -> dict[str, Any]:
    """``status_info`` as a client sees it: the workspace by its name, the store without a
    file path (a SQLite file is ``sqlite (in the workspace)``; a server URL keeps its host,
    the password masked), a local base directory by its name."""
    shown = store.display_url
    if store.dialect == "sqlite":
        inside = any(str(root) in shown for root in (workspace.root, workspace.root.resolve()))
        shown = "sqlite (in the workspace)" if inside else "sqlite (a file on the server)"
    base = status.get("base")
    if base and looks_local(base["source"]):
        base = {**base, "source": Path(base["source"]).name}
    return {**status, "workspace": workspace.root.name, "store": shown, "base": base}


class PathHider:
    """Rewrites the server paths of one workspace wherever they appear: in bytes of a body
    (also JSON-escaped, as ``json.dumps`` writes them), in text, in plain JSON-ready data."""

    def __init__(self, workspace: Workspace) -> None:
        pairs: list[tuple[str, str]] = []
        for root in {str(workspace.root), str(workspace.root.resolve())}:
            pairs += [(root + os.sep, ""), (root, ".")]
        artifacts = str(workspace.artifacts_dir)
        if not artifacts.startswith(str(workspace.root.resolve())):
            pairs += [(artifacts + os.sep, ""), (artifacts, ".")]
        if looks_local(workspace.settings.base):
            base = str(Path(workspace.settings.base).expanduser())
            pairs.append((base, Path(base).name))
        home = str(Path.home())
        if len(home) > 1:
            pairs += [(home + os.sep, "~" + os.sep), (home, "~")]
        # Longest first: the artifacts directory may lie inside the workspace, the workspace in home.
        self.text_pairs = sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)
        escaped: dict[bytes, bytes] = {}
        for server, shown in pairs:
            escaped[server.encode()] = shown.encode()
            escaped[json.dumps(server)[1:-1].encode()] = json.dumps(shown)[1:-1].encode()
        self.byte_pairs = sorted(escaped.items(), key=lambda pair: len(pair[0]), reverse=True)

    def body(self, body: bytes) -> bytes:
        """A response body (UTF-8 or JSON) with the paths rewritten."""
        for server, shown in self.byte_pairs:
            body = body.replace(server, shown)
        return body

    def text(self, text: str) -> str:
        """``text`` with the paths rewritten."""
        for server, shown in self.text_pairs:
            text = text.replace(server, shown)
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
