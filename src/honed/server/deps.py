"""What routes receive from the app, declared once (the FastAPI template's way)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from honed.store import Store
from honed.workspace import Workspace


async def _store(request: Request) -> Store:
    return request.app.state.store


async def _workspace(request: Request) -> Workspace:
    return request.app.state.workspace


StoreDep = Annotated[Store, Depends(_store)]
WorkspaceDep = Annotated[Workspace, Depends(_workspace)]
