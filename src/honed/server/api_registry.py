"""Adapters, tracks and deployments: list, deploy, approve, reject, roll back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from honed.registry import deployment
from honed.registry.tracks import add_track
from honed.server.deps import Id, Int64, RowId, StoreDep, WorkspaceDep
from honed.states import DeployAction
from honed.store import AdapterInfo, DeploymentInfo, TrackInfo
from honed.store.serialize import deploy_result

router = APIRouter(prefix="/api", tags=["registry"])


class Adapter(AdapterInfo):
    """An adapter as the API shows it: where its files lie on the server stays there."""

    path: SkipJsonSchema[str | None] = Field(None, exclude=True)


class AdapterDetail(Adapter):
    """An adapter with the deployments that involved it, newest first."""

    deployments: list[DeploymentInfo]


class Track(TrackInfo):
    """A track with the adapter deployed on it (None: the bare base)."""

    deployed: Adapter | None


class DeployAnswer(BaseModel):
    """What a deploy, approve or rollback did; ``hooks_ok`` says whether every deploy
    hook succeeded (each hook's report is in ``hooks``)."""

    track: str
    action: DeployAction
    adapter: int | None
    name: str | None
    previous: int | None
    deployment: int
    pointer: str
    hooks: list[dict[str, Any]]
    hooks_ok: bool


@router.get("/adapters", response_model=list[Adapter])
def list_adapters(store: StoreDep, track: str | None = None) -> list[AdapterInfo]:
    """Adapters, newest first, with state, evaluation and gate verdict."""
    return store.list_adapters(track)


@router.get("/adapters/{adapter_id}")
def get_adapter(adapter_id: Id, store: StoreDep) -> AdapterDetail:
    """One adapter with the deployments that involved it."""
    adapter = store.get_adapter(adapter_id)
    history = [d for d in store.list_deployments(adapter.track)
               if adapter_id in (d.adapter_id, d.previous_adapter_id)]
    return AdapterDetail(**dict(adapter), deployments=history)


class DeployRequest(BaseModel):
    force: bool = Field(False, description="Deploy even if it did not pass its gates.")
    reason: str = Field("deployed from the API", max_length=500)


@router.post("/adapters/{adapter_id}/deploy", response_model=DeployAnswer)
def deploy(adapter_id: Id, workspace: WorkspaceDep, store: StoreDep, body: DeployRequest | None = None) -> dict:
    """Make the adapter live on its track (hooks run after the switch; ``hooks_ok``
    says whether they all succeeded)."""
    body = body or DeployRequest()
    return deploy_result(deployment.deploy(workspace, store, adapter_id, force=body.force, reason=body.reason))


@router.post("/adapters/{adapter_id}/approve", response_model=DeployAnswer)
def approve(adapter_id: Id, workspace: WorkspaceDep, store: StoreDep) -> dict:
    """Approve an adapter that awaits approval: it is deployed."""
    return deploy_result(deployment.approve(workspace, store, adapter_id))


@router.post("/adapters/{adapter_id}/reject", response_model=Adapter)
def reject(adapter_id: Id, store: StoreDep) -> AdapterInfo:
    """Reject an adapter that awaits approval (kept, with its numbers)."""
    return store.reject_adapter(adapter_id)


@router.get("/tracks")
def list_tracks(store: StoreDep) -> list[Track]:
    """Tracks with their base version and deployed adapter."""
    return [Track(**dict(track), deployed=store.deployed_adapter(track.name)) for track in store.list_tracks()]


class NewTrack(BaseModel):
    name: str = Field(description="1-64 letters, digits, '-' or '_'.")
    base_version: Int64 | None = Field(None, ge=0, description="Base version (default: the newest).")


@router.post("/tracks", status_code=201)
def create_track(new: NewTrack, workspace: WorkspaceDep, store: StoreDep) -> TrackInfo:
    """Add a track (its own inbox folder, jobs and deployment)."""
    return add_track(workspace, store, new.name, new.base_version)


@router.get("/tracks/{track}/deployments")
def deployments(track: str, store: StoreDep, limit: int = Query(50, ge=1, le=1000)) -> list[DeploymentInfo]:
    """A track's deployment history, newest first."""
    store.require_track(track)
    return store.list_deployments(track, limit=limit)


class RollbackRequest(BaseModel):
    to: RowId | None = Field(None, description="An adapter deployed before (default: the previous one).")


@router.post("/tracks/{track}/rollback", response_model=DeployAnswer)
def rollback(track: str, workspace: WorkspaceDep, store: StoreDep, body: RollbackRequest | None = None) -> dict:
    """Go back to the adapter deployed before the current one (again: further back)."""
    store.require_track(track)
    return deploy_result(deployment.rollback(workspace, store, track, (body or RollbackRequest()).to))
