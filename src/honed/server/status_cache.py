"""``/api/status`` for many watchers at once.

Fifty open monitors ask for the status every second; computing it takes several store
queries, and on a machine whose cores are busy training each query can wait for a time
slice. So the server computes it at most once per ``[server] status_cache_s`` (one
computation at a time; concurrent askers wait for it and share it), and a change made
through this server (any request but GET or HEAD) drops the cached copy, so a client
that paused a job and then reads the status sees the pause. Changes made by the daemon
show up within ``status_cache_s``, as they would on the next poll anyway.
"""

from __future__ import annotations

import threading
import time

from honed.daemon.status import status_info
from honed.server_paths import public_status
from honed.store import Store
from honed.store.serialize import plain


class StatusCache:
    """The last status and when it was computed; thread-safe, one computation at a time."""

    def __init__(self, workspace, store: Store, ttl_s: float) -> None:
        self.workspace, self.store, self.ttl_s = workspace, store, ttl_s
        self._lock = threading.Lock()
        self._value: dict | None = None
        self._at = 0.0
        self._generation = 0

    def fresh(self) -> dict | None:
        """The cached status if it is recent enough, else None (never blocks)."""
        value = self._value
        return value if value is not None and time.monotonic() - self._at < self.ttl_s else None

    def get(self) -> dict:
        """A status at most ``ttl_s`` old, computed now if needed (blocks: call it from a
        worker thread)."""
        with self._lock:
            value = self.fresh()
            if value is not None:
                return value
            generation = self._generation
            value = public_status(self.workspace, self.store, plain(status_info(self.workspace, self.store)))
            if generation == self._generation:  # no change was made while it was computed
                self._value, self._at = value, time.monotonic()
            return value

    def invalidate(self) -> None:
        self._generation += 1
        self._value = None


class InvalidateOnChange:
    """ASGI middleware: once a request that may change something (not GET or HEAD) is
    answered, the status cache is dropped."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)

        async def send_then_invalidate(message):
            if message["type"] == "http.response.start":
                cache = getattr(scope["app"].state, "status_cache", None)
                if cache is not None:
                    cache.invalidate()
            await send(message)

        return await self.app(scope, receive, send_then_invalidate)
