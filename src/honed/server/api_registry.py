"""Adapters, tracks and deployments: list, deploy, approve, reject, roll back."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from honed.registry import deployment
from honed.registry.tracks import add_track
from honed.serialize import deploy_result, plain
from honed.server.deps import StoreDep, WorkspaceDep

router = APIRouter(prefix="/api", tags=["registry"])


def _adapter(adapter) -> dict:
    out = plain(adapter)
    out.pop("path", None)
    return out


@router.get("/adapters")
def list_adapters(store: StoreDep, track: str | None = None) -> list[dict]:
    """Adapters, newest first, with state, evaluation and gate verdict."""
    return [_adapter(a) for a in store.list_adapters(track)]


@router.get("/adapters/{adapter_id}")
def get_adapter(adapter_id: int, store: StoreDep) -> dict:
    """One adapter with the deployments that involved it."""
    adapter = store.get_adapter(adapter_id)
    history = [d for d in store.list_deployments(adapter.track)
               if adapter_id in (d.adapter_id, d.previous_adapter_id)]
    return {**_adapter(adapter), "deployments": plain(history)}


class DeployRequest(BaseModel):
    force: bool = Field(False, description="Deploy even if it did not pass its gates.")
    reason: str = Field("deployed from the API", max_length=500)


@router.post("/adapters/{adapter_id}/deploy")
def deploy(adapter_id: int, workspace: WorkspaceDep, store: StoreDep, body: DeployRequest | None = None) -> dict:
    """Make the adapter live on its track (hooks run after the switch; ``hooks_ok``
    says whether they all succeeded)."""
    body = body or DeployRequest()
    return deploy_result(deployment.deploy(workspace, store, adapter_id, force=body.force, reason=body.reason))


@router.post("/adapters/{adapter_id}/approve")
def approve(adapter_id: int, workspace: WorkspaceDep, store: StoreDep) -> dict:
    """Approve an adapter that awaits approval: it is deployed."""
    return deploy_result(deployment.approve(workspace, store, adapter_id))


@router.post("/adapters/{adapter_id}/reject")
def reject(adapter_id: int, store: StoreDep) -> dict:
    """Reject an adapter that awaits approval (kept, with its numbers)."""
    return _adapter(store.reject_adapter(adapter_id))


@router.get("/tracks")
def list_tracks(store: StoreDep) -> list[dict]:
    """Tracks with their base version and deployed adapter."""
    out = []
    for track in store.list_tracks():
        live = store.deployed_adapter(track.name)
        out.append({**plain(track), "deployed": _adapter(live) if live else None})
    return out


class NewTrack(BaseModel):
    name: str = Field(description="1-64 letters, digits, '-' or '_'.")
    base_version: int | None = Field(None, description="Base version (default: the newest).")


@router.post("/tracks", status_code=201)
def create_track(new: NewTrack, workspace: WorkspaceDep, store: StoreDep) -> dict:
    """Add a track (its own inbox folder, jobs and deployment)."""
    return plain(add_track(workspace, store, new.name, new.base_version))


@router.get("/tracks/{track}/deployments")
def deployments(track: str, store: StoreDep, limit: int = 50) -> list[dict]:
    """A track's deployment history, newest first."""
    store.require_track(track)
    return plain(store.list_deployments(track, limit=limit))


class RollbackRequest(BaseModel):
    to: int | None = Field(None, description="An adapter deployed before (default: the previous one).")


@router.post("/tracks/{track}/rollback")
def rollback(track: str, workspace: WorkspaceDep, store: StoreDep, body: RollbackRequest | None = None) -> dict:
    """Go back to the adapter deployed before the current one (again: further back)."""
    store.require_track(track)
    return deploy_result(deployment.rollback(workspace, store, track, (body or RollbackRequest()).to))
