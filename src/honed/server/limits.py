"""How much a client may send: request bodies stop at ``[server] max_json_body_bytes``.

The check sits on the ASGI ``receive`` channel, so it holds whatever the route does with
the body: a declared Content-Length over the limit is refused before a byte is read, and a
chunked body is counted as it arrives and refused as soon as it passes the limit, never
held whole in memory. The refusal is an ``HTTPException`` raised where the route reads,
so the app's error handlers give it the usual JSON shape (413). Dataset uploads stream to
disk under their own, larger limit (``server.upload_max_mb``, see :mod:`api_data`).
"""

from __future__ import annotations

from fastapi import HTTPException

# Routes that read their body under a limit of their own: (method, path).
OWN_LIMIT = {("POST", "/api/datasets")}


def too_big(size: int, limit: int, *, declared: bool) -> HTTPException:
    """The 413 for a body of ``size`` bytes (so far, unless ``declared``)."""
    said = f"{size:,} bytes" if declared else f"more than {limit:,} bytes (stopped there)"
    return HTTPException(413, f"the request body is {said}; at most {limit:,} bytes are accepted "
                              "(server.max_json_body_bytes)")


class LimitRequestBodies:
    """ASGI middleware: request bodies larger than ``server.max_json_body_bytes`` get 413."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (scope["method"], scope["path"]) in OWN_LIMIT:
            return await self.app(scope, receive, send)
        limit = scope["app"].state.workspace.settings.server.max_json_body_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        received = 0

        async def counted_receive():
            nonlocal received
            if declared.isdigit() and int(declared) > limit:
                raise too_big(int(declared), limit, declared=True)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_big(received, limit, declared=False)
            return message

        return await self.app(scope, counted_receive, send)
