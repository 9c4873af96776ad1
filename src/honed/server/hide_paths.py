"""The last door every HTTP answer passes through: server paths in JSON, event-stream and
text bodies become workspace-relative names (see :mod:`honed.server_paths`)."""

from __future__ import annotations

from honed.server_paths import PathHider

REWRITTEN_TYPES = (b"application/json", b"text/event-stream", b"text/plain")


class HidePaths:
    """ASGI middleware: server paths in JSON, event-stream and text answers become
    workspace-relative names. A body with a Content-Length is rewritten whole (and its
    length set again); a streamed one chunk by chunk (each is one complete event)."""

    def __init__(self, app) -> None:
        self.app = app
        self.hider: PathHider | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.hider is None:
            self.hider = PathHider(scope["app"].state.workspace)
        hider = self.hider
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
                return await send({**message, "body": hider.body(message.get("body", b""))})
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return None
            body = hider.body(b"".join(parts))
            assert start is not None
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body, "more_body": False})

        return await self.app(scope, receive, rewriting_send)
