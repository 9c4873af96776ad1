"""Who may talk to the server, and what a client may name.

The server binds to loopback by default. Any other address needs a token (from the
environment variable ``[server] token_env``); when a token is set, every route checks it,
sent as ``Authorization: Bearer TOKEN`` or, for the browser, as the ``honed_token``
cookie that opening a page with ``?token=TOKEN`` sets. Static files (the monitor's
scripts and styles) carry no data and are public.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re

from fastapi import HTTPException, Request

COOKIE = "honed_token"
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ServerConfigError(Exception):
    """The server cannot start as configured; the message says what to change."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_token(settings, host: str) -> str | None:
    """The token every route checks (None: no check), or ServerConfigError when ``host``
    is not loopback and no token is set."""
    token = os.environ.get(settings.token_env, "").strip() or None
    if token is None and not is_loopback(host):
        raise ServerConfigError(
            f"refusing to bind to {host}: any address but loopback needs a token. Set the environment "
            f"variable {settings.token_env} (server.token_env) to a long random secret, e.g. "
            f"export {settings.token_env}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))'), "
            "and send it as 'Authorization: Bearer TOKEN'; or bind to 127.0.0.1")
    if token is not None and len(token) < 16:
        raise ServerConfigError(f"{settings.token_env} is {len(token)} characters long; use at least 16")
    return token


def presented_token(request: Request) -> str | None:
    """The token a request carries: the Authorization header, the cookie, or (GET only,
    so a link can open the monitor) the ``token`` query parameter."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    if COOKIE in request.cookies:
        return request.cookies[COOKIE]
    if request.method == "GET":
        return request.query_params.get("token")
    return None


async def require_token(request: Request) -> None:
    """FastAPI dependency on every route: 401 unless the request carries the token."""
    expected = request.app.state.token
    if expected is None:
        return
    given = presented_token(request)
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong token: send 'Authorization: Bearer TOKEN' with the token the server was "
                   f"started with (environment variable {request.app.state.workspace.settings.server.token_env})",
            headers={"WWW-Authenticate": "Bearer"},
        )


def check_file_name(name: str, what: str = "name") -> str:
    """``name`` if it is safe as one file name (no path separators, no leading dot), else a
    400 that says what is allowed."""
    if not FILE_NAME.fullmatch(name) or ".." in name:
        raise HTTPException(
            status_code=400,
            detail=f"{what} {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or "
                   "digit, without '..' (it becomes a file name)",
        )
    return name
