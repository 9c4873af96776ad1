"""``honed learn``."""

from __future__ import annotations
