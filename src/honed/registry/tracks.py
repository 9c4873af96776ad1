"""Tracks: named lines of adapters, each with its own inbox folder, jobs and deployment."""

from __future__ import annotations

import re

from honed.store import TrackInfo

TRACK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class TrackError(Exception):
    """A track that cannot be added; the message says why."""


def check_track_name(name: str) -> str:
    """``name`` if it can name a track (it becomes a folder name), else a TrackError."""
    if not TRACK_NAME.fullmatch(name) or name == "rejected":
        raise TrackError(f"track name {name!r}: use 1-64 letters, digits, '-' or '_' (not 'rejected'); "
                         "it becomes a folder name")
    return name


def add_track(workspace, store, name: str, base_version: int | None = None) -> TrackInfo:
    """Add track ``name`` on ``base_version`` (default: the newest base) and its inbox folder."""
    check_track_name(name)
    if store.get_track(name) is not None:
        raise TrackError(f"track {name!r} already exists")
    version = base_version if base_version is not None else store.get_base().version
    if store.get_base(version) is None:
        raise TrackError(f"no base version {version}; bases: {[b.version for b in store.list_bases()]}")
    info = store.ensure_track(name, version)
    (workspace.inbox / name).mkdir(parents=True, exist_ok=True)
    return info
