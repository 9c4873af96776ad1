"""The web monitor: one HTML shell and a script that draws the overview, job, adapters
and datasets pages from the JSON API and the live stream. Everything it loads (uPlot
included) ships in the package under ``static/``: no CDN, works offline."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from honed.server.security import COOKIE

STATIC = Path(__file__).parent / "static"
router = APIRouter(include_in_schema=False)


def _page(request: Request) -> Response:
    if "token" in request.query_params:  # a link with ?token=: keep it in a cookie, drop it from the URL
        response = RedirectResponse(request.url.path, status_code=303)
        response.set_cookie(COOKIE, request.query_params["token"], httponly=True, samesite="strict")
        return response
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


@router.get("/")
def overview(request: Request) -> Response:
    return _page(request)


@router.get("/jobs/{job_id}")
def job_page(job_id: int, request: Request) -> Response:
    return _page(request)


@router.get("/adapters")
def adapters_page(request: Request) -> Response:
    return _page(request)


@router.get("/datasets")
def datasets_page(request: Request) -> Response:
    return _page(request)


def mount(app: FastAPI) -> None:
    """Add the pages and the static files to ``app``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
