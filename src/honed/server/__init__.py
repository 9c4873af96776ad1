"""The HTTP side of honed: a FastAPI app (built by :func:`create_app`) with the JSON API,
live streams, Prometheus metrics and the web monitor. ``honed serve`` runs it."""

from honed.server.app import create_app
from honed.server.security import ServerConfigError

__all__ = ["ServerConfigError", "create_app"]
