"""``GET /api/health`` (and ``/healthz``): is the server able to answer, and with what.

It says whether the store answers, which model versions are in memory, on which device,
and the serving state: ``serving``, released to a training job (chat requests get 503
with Retry-After meanwhile), on the CPU while a job trains, or sharing the device.
The status is 200 while the store answers, else 503, so a load balancer or a
supervisor can probe it as it is.

Like every route it checks the token when the server has one: the answer names the
deployed adapters, the device and the job training, which is more than an anonymous
caller should learn about a deployment. A probe that cannot send a token still learns
that the process is up from the 401. Reading it never imports torch.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from honed.server.deps import StoreDep
from honed.store import Store, StoreError

router = APIRouter(tags=["health"])


def _store_reachable(store: Store) -> tuple[bool, str | None]:
    try:
        store.last_event_id()
    except StoreError as exc:
        return False, str(exc)
    return True, None


@router.get("/api/health")
@router.get("/healthz", include_in_schema=False)
async def health(request: Request, store: StoreDep) -> JSONResponse:
    """Whether the server can answer: store reachable, models loaded, device, serving state."""
    reachable, problem = await run_in_threadpool(_store_reachable, store)
    pool = request.app.state.model_pool
    yielder = request.app.state.device_yielder
    body = {
        "ok": reachable,
        "store": {"reachable": reachable, "error": problem},
        "models_loaded": pool.loaded(),
        "device": yielder.device_name() or (str(pool.device) if pool.device is not None else None),
        "on_training": request.app.state.workspace.settings.server.on_training,
        **yielder.describe(),
    }
    return JSONResponse(body, status_code=200 if reachable else 503)
