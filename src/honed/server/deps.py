"""What routes receive from the app, declared once (the FastAPI template's way)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from pydantic import Field

from honed.store import Store
from honed.workspace import Workspace


async def _store(request: Request) -> Store:
    return request.app.state.store


async def _workspace(request: Request) -> Workspace:
    return request.app.state.workspace


StoreDep = Annotated[Store, Depends(_store)]
WorkspaceDep = Annotated[Workspace, Depends(_workspace)]


# SQLite and PostgreSQL keep integers in 64 bits: a larger one is bad input (400), not a crash.
INT64_MAX = 2**63 - 1
Int64 = Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
RowId = Annotated[int, Field(ge=1, le=INT64_MAX)]  # a body field naming a stored row
Id = Annotated[int, Path(ge=1, le=INT64_MAX)]  # a path parameter naming a stored row
