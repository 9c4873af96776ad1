"""``create_app(workspace)``: the FastAPI app of one workspace.

Routes are thin: they check what a client sent, call the same library functions as the
CLI (daemon.control, registry.deployment, data.datasets, ...) and return plain JSON.
Errors are JSON too, ``{"error": "what is wrong and what to do"}``, with the status code
that fits: 400 bad input, 401 no token, 404 unknown id, 409 wrong state, 413 too big,
503 store unreachable.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from honed import __version__
from honed.daemon.control import ControlError
from honed.learning.trigger import LearnError
from honed.registry.deployment import DeployError
from honed.registry.tracks import TrackError
from honed.server import (
    api_data,
    api_experiences,
    api_jobs,
    api_learning,
    api_openai,
    api_registry,
    health,
    live,
    pages,
    prometheus,
)
from honed.server.device_yield import DeviceYielder
from honed.server.hide_paths import HidePaths
from honed.server.limits import LimitRequestBodies
from honed.server.live import LiveFeed
from honed.server.security import RequestGuard, require_token, server_token
from honed.server.serving import ModelPool
from honed.server.status_cache import InvalidateOnChange, StatusCache
from honed.store import JobStateError, NotFoundError, StoreError, StoreUnavailableError

log = logging.getLogger(__name__)


def create_app(workspace, *, host: str | None = None) -> FastAPI:
    """The app for ``workspace`` (a :class:`honed.workspace.Workspace`). ``host`` is the
    address it will be bound to (default ``[server] host``): anything but loopback
    needs a token, else :class:`ServerConfigError`."""
    settings = workspace.settings.server
    token = server_token(settings, host or settings.host)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.store = workspace.open_store(busy_timeout_s=5.0)
        app.state.status_cache = StatusCache(workspace, app.state.store, settings.status_cache_s)
        app.state.device_yielder = DeviceYielder(workspace)  # gives the device to trainers that claim it
        app.state.model_pool = ModelPool(workspace, app.state.store, app.state.device_yielder)  # loads at first request
        app.state.live = LiveFeed(workspace, app.state.store, app.state.status_cache, settings.live_poll_s)
        app.state.upstream = None  # proxy capture's HTTP client, made at the first proxied request
        try:
            yield
        finally:
            if app.state.upstream is not None:
                await app.state.upstream.aclose()
            await app.state.live.close()
            app.state.device_yielder.stop()
            app.state.store.close()

    app = FastAPI(
        title="honed", version=__version__, lifespan=lifespan,
        description="Steer and watch honed: jobs, datasets, runs, adapters, deployments.",
        dependencies=[Depends(require_token)],
    )
    app.state.workspace = workspace
    app.state.token = token
    for module in (api_jobs, api_data, api_registry, api_experiences, api_learning, api_openai, health, live,
                   prometheus):
        app.include_router(module.router)
    pages.mount(app)
    app.add_middleware(InvalidateOnChange)
    app.add_middleware(LimitRequestBodies)
    app.add_middleware(HidePaths)
    app.add_middleware(RequestGuard, settings=settings, host=host or settings.host, reply=_error)  # outermost
    _error_handlers(app)
    return app


def _error(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """``{"error": message}``; under /v1/ in OpenAI's shape, which its SDKs read."""
    if request.url.path.startswith("/v1/"):
        kinds = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 415: "invalid_request_error"}
        kind = kinds.get(status, "api_error")
        body = {"error": {"message": message, "type": kind, "code": status}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)  # Starlette's: FastAPI's, and the router's 404 and 405 too
    async def http_error(request: Request, exc: HTTPException):
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"nothing at {request.method} {request.url.path} (the API is listed at /docs)"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        return _error(request, exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                at = err.get("loc", ("body", "?"))[-1]
                detail = (err.get("ctx") or {}).get("error", "not JSON")
                problems.append(f"the request body is not valid JSON: {detail} (at character {at})")
                continue
            where = ".".join(str(part) for part in err.get("loc", ()) if part != "body") or "request body"
            problems.append(f"{where}: {err.get('msg')}")
        return _error(request, 400, "; ".join(problems))

    @app.exception_handler(Exception)  # the last resort: no traceback or server path reaches the client
    async def internal_error(request: Request, exc: Exception):
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _error(request, 500, "internal error; see the server log")

    for error_type, status in ERROR_STATUS.items():
        app.add_exception_handler(error_type, _reply_with(status))


# The status each library error answers with; the most specific class that matches wins.
ERROR_STATUS = {
    NotFoundError: 404, StoreUnavailableError: 503, JobStateError: 409, StoreError: 400,
    ControlError: 409, DeployError: 409, TrackError: 400, LearnError: 409,
}


def _reply_with(status: int):
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return _error(request, status, str(exc), {"Retry-After": "5"} if status == 503 else None)

    return handler
