"""``honed mcp``."""

from __future__ import annotations
