"""Who may talk to the server, and what a client may name.

The server binds to loopback by default. Any other address needs a token (from the
environment variable ``[server] token_env``); when a token is set, every route checks it,
sent as ``Authorization: Bearer TOKEN`` or, for the browser, as the ``honed_token``
cookie that opening a page with ``?token=TOKEN`` sets. Static files (the monitor's
scripts and styles) carry no data and are public.

A browser is a client the server cannot trust with its own credentials alone: any page it
opens may send requests to 127.0.0.1. :class:`RequestGuard` answers only to the names the
server is reached by (against DNS rebinding) and takes changes only from its own pages
(against cross-site request forgery); clients that are not browsers (curl, httpx, the
SDKs) send no Origin header and are not affected.
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


# --- what browsers may send -------------------------------------------------------------

CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The bodies a page on any site may send without asking first (no CORS preflight).
SIMPLE_CONTENT_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
# Routes that take the request body as it is (a file: api_data.upload_dataset) rather than JSON.
RAW_BODY_PATHS = frozenset({"/api/datasets"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
DEFAULT_PORTS = {"http": "80", "https": "443"}


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8321`` gives ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def normal_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, without a default port or trailing slash,
    so that origins written differently compare equal."""
    origin = origin.strip().lower().rstrip("/")
    scheme, sep, netloc = origin.partition("://")
    if sep and netloc.endswith(":" + DEFAULT_PORTS.get(scheme, "-")):
        netloc = netloc.rsplit(":", 1)[0]
    return f"{scheme}{sep}{netloc}"


class RequestGuard:
    """ASGI middleware in front of every route: refuses requests addressed by a name the
    server does not answer to (400, ``server.allowed_hosts``), changes sent by a page of
    another origin (403, ``server.allowed_origins``), and JSON routes' bodies of the types a
    page may send without asking (415). ``reply(request, status, message)`` makes the
    error response, in the app's one shape."""

    def __init__(self, app, *, settings, host: str, reply) -> None:
        self.app = app
        self.reply = reply
        self.bound = host
        self.any_host = "*" in settings.allowed_hosts or (host in WILDCARD_HOSTS and not settings.allowed_hosts)
        self.hosts = {host_name(h) for h in settings.allowed_hosts} | {host_name(host)}
        self.origins = {normal_origin(o) for o in settings.allowed_origins}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            refusal = self.refusal(request.method, scope["path"], scope.get("scheme", "http"), request.headers)
            if refusal is not None:
                response = self.reply(request, *refusal)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, method: str, path: str, scheme: str, headers) -> tuple[int, str] | None:
        """``(status, message)`` for a request to refuse, None for one to serve."""
        host = headers.get("host")
        if host is not None and not self.answers_to(host_name(host)):
            shown = "" if self.bound in WILDCARD_HOSTS else f"{self.bound}, "
            return 400, (f"Host {host!r} is not a name this server answers to ({shown}localhost, 127.0.0.1, ::1 "
                         "and server.allowed_hosts): requests by other names are refused against DNS rebinding; "
                         "add the name to server.allowed_hosts if clients reach the server by it")
        if method not in CHANGING_METHODS:
            return None
        origin = headers.get("origin")
        own = normal_origin(f"{scheme}://{host}") if host is not None else None
        if origin is not None and normal_origin(origin) not in self.origins | {own}:
            return 403, (f"{method} from a page of another origin ({origin}) refused: changes are taken from "
                         f"this server's own pages ({own}) and from origins in server.allowed_origins, or from "
                         "clients that send no Origin header")
        site = headers.get("sec-fetch-site", "").lower()
        if origin is None and site in ("cross-site", "same-site"):
            return 403, (f"{method} from a page of another site (Sec-Fetch-Site: {site}) refused: changes are "
                         "taken from this server's own pages, or from clients that send no Origin header")
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type in SIMPLE_CONTENT_TYPES and path not in RAW_BODY_PATHS:
            return 415, (f"Content-Type {content_type} is not taken here: send the body as JSON with "
                         "'Content-Type: application/json', or send no body")
        return None

    def answers_to(self, name: str) -> bool:
        """Whether ``name`` (a Host header's name) is one the server may be reached by."""
        return self.any_host or name in self.hosts or is_loopback(name)
