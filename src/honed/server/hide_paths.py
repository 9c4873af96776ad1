"""Server paths stay on the server: no answer names where the workspace lies.

Routes leave out the fields that are paths and name things by id; what remains is free
text that may quote a path (a job's error, an event, an ingest report, a hook's output, a
run's manifest). :class:`HidePaths` is the last door every answer passes through: in JSON
and event-stream bodies the workspace's directories become workspace-relative names
(``/srv/ws/adapters/a3`` → ``adapters/a3``), a local base directory becomes its name and
the home directory ``~``. The CLI, which runs on the server, still prints full paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from honed.workspace import looks_local

REWRITTEN_TYPES = (b"application/json", b"text/event-stream", b"text/plain")


def public_status(workspace, store, status: dict) -> dict:
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


def replacements(workspace) -> list[tuple[bytes, bytes]]:
    """(server text, what a client sees instead), longest first, each in the two forms it
    takes in a body: UTF-8, and JSON-escaped as ``json.dumps`` writes it by default."""
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
    out: dict[bytes, bytes] = {}
    for server, shown in pairs:
        out[server.encode()] = shown.encode()
        out[json.dumps(server)[1:-1].encode()] = json.dumps(shown)[1:-1].encode()
    return sorted(out.items(), key=lambda pair: len(pair[0]), reverse=True)


def hide(body: bytes, pairs: list[tuple[bytes, bytes]]) -> bytes:
    for server, shown in pairs:
        body = body.replace(server, shown)
    return body


class HidePaths:
    """ASGI middleware: server paths in JSON, event-stream and text answers become
    workspace-relative names. A body with a Content-Length is rewritten whole (and its
    length set again); a streamed one chunk by chunk (each is one complete event)."""

    def __init__(self, app) -> None:
        self.app = app
        self.pairs: list[tuple[bytes, bytes]] | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.pairs is None:
            self.pairs = replacements(scope["app"].state.workspace)
        pairs = self.pairs
        start: dict | None = None  # held back while a whole body is collected
        mode = "pass"  # pass, whole or chunks
        parts: list[bytes] = []

        async def rewriting_send(message):
            nonlocal start, mode
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if not headers.get(b"content-type", b"").startswith(REWRITTEN_TYPES):
                    return await send(message)
                if b"content-length" in headers:
                    mode, start = "whole", message
                    return None
                mode = "chunks"
                return await send(message)
            if message["type"] != "http.response.body" or mode == "pass":
                return await send(message)
            if mode == "chunks":
                return await send({**message, "body": hide(message.get("body", b""), pairs)})
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return None
            body = hide(b"".join(parts), pairs)
            assert start is not None
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body, "more_body": False})

        return await self.app(scope, receive, rewriting_send)
