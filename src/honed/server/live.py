"""Live updates for the monitor and other watchers: ``GET /api/live`` is a server-sent
events stream of job events, new metrics rows of running jobs, status changes and system
figures.

One reader serves every client: while anyone listens, a single task reads what is new
from the store every ``[server] live_poll_s`` and fans it out, so fifty open pages cost
the store what one does, and no page polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from honed.store import Store, StoreError
from honed.store.schema import METRIC_KINDS
from honed.store.serialize import plain

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["live"])

QUEUE_SIZE = 1000  # messages a slow client may lag behind before it is dropped
SYSTEM_EVERY_S = 2.0


class LiveFeed:
    """Reads what changed in the store and hands it to every subscriber's queue."""

    def __init__(self, workspace, store: Store, status_cache, poll_s: float) -> None:
        self.workspace, self.store, self.status_cache, self.poll_s = workspace, store, status_cache, poll_s
        self.subscribers: set[asyncio.Queue] = set()
        self.task: asyncio.Task | None = None
        self.last_event = 0
        self.last_step: dict[tuple[str, str], int] = {}  # (run, kind) -> last step sent
        self.last_status = ""
        self.last_system = 0.0

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self.subscribers.add(queue)
        if self.task is None or self.task.done():
            self.last_event = self.store.last_event_id()
            self.last_step.clear()
            self.last_status = ""
            self.task = asyncio.create_task(self._run())
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self.subscribers.discard(queue)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        while self.subscribers:
            try:
                messages = await asyncio.to_thread(self._read)
            except StoreError as exc:  # the store is down: say so, keep trying
                messages = [("error", {"error": str(exc)})]
            except Exception:  # noqa: BLE001 - a bug here must not end every client's stream
                log.exception("live feed: reading the store failed")
                messages = []
            for message in messages:
                for queue in list(self.subscribers):
                    try:
                        queue.put_nowait(message)
                    except asyncio.QueueFull:  # a client that stopped reading is let go;
                        self.subscribers.discard(queue)  # its browser reconnects and refetches
                        while not queue.empty():
                            queue.get_nowait()
                        queue.put_nowait(("overflow", {}))
            await asyncio.sleep(self.poll_s)

    def _read(self) -> list[tuple[str, dict]]:
        """Everything new since the last read, as (event name, data)."""
        out: list[tuple[str, dict]] = []
        for event in self.store.events_after(self.last_event):
            self.last_event = event.id
            out.append(("event", plain(event)))
        status = self.status_cache.get()
        text = json.dumps(status, sort_keys=True, default=str)
        if text != self.last_status:
            self.last_status = text
            out.append(("status", status))
        for job in status["running"]:
            if job.get("run"):
                out.extend(self._new_metrics(job["job"], job["run"]))
        now = time.monotonic()
        if now - self.last_system >= SYSTEM_EVERY_S:
            from honed.telemetry.system import accelerator_stats, system_stats

            self.last_system = now
            out.append(("system", {"system": system_stats(), "accelerators": accelerator_stats()}))
        return out

    def _new_metrics(self, job_id: int, run_id: str) -> list[tuple[str, dict]]:
        out = []
        for kind in METRIC_KINDS:
            key = (run_id, kind)
            if key not in self.last_step:  # first sight: clients fetch the history themselves
                rows = self.store.get_metrics(run_id, kind, latest_attempt_only=False)
                self.last_step[key] = rows[-1]["step"] if rows else -1
                continue
            rows = self.store.get_metrics(run_id, kind, latest_attempt_only=False, after_step=self.last_step[key])
            if rows:
                self.last_step[key] = rows[-1]["step"]
                out.append(("metrics", {"job": job_id, "run": run_id, "kind": kind, "rows": plain(rows)}))
        return out


@router.get("/live", response_class=EventSourceResponse)
async def live(request: Request) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events: ``status`` (whenever it changes), ``event`` (a job event),
    ``metrics`` (new rows of a running job's run: ``{job, run, kind, rows}``), ``system``
    (every 2 s) and ``error`` (the store is unreachable)."""
    feed: LiveFeed = request.app.state.live
    queue = feed.subscribe()
    try:
        yield ServerSentEvent(event="hello", data={"poll_s": feed.poll_s})
        while True:
            name, data = await queue.get()
            if name == "overflow":
                return
            yield ServerSentEvent(event=name, data=data)
    finally:
        feed.unsubscribe(queue)
