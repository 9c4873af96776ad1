"""``honed base add``: a GGUF file (or ``smollm2``) as the next base version of a workspace.

The file is converted once into the cache (:mod:`honed.models.gguf_base`), placed in the
workspace's ``bases/vN`` (hard links where possible), and recorded with its lineage
(file, sha256, architecture, quantization, conversion). Tracks stay where they are
unless asked: ``track`` moves one onto the new base, and since an adapter trained on
another base does not apply to it, that track then serves its bare new base until an
adapter trained on it is deployed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from honed.workspace import Workspace, place_base


class BaseAddError(Exception):
    """A base that cannot be added; the message says why and what to do."""


@dataclass
class AddedBase:
    """A base version just recorded: its number, directory, source and lineage, and the
    track moved onto it (None when none was)."""

    version: int
    path: Path
    source: str
    lineage: dict
    track: str | None = None


def add_gguf_base(workspace: Workspace, store, base: str, description: str = "",
                  track: str | None = None) -> AddedBase:
    """Convert ``base`` ('smollm2' or a GGUF path), place it as the next base version and
    record it; with ``track``, move that existing track onto it."""
    from honed.models.gguf_base import SMOLLM2, GGUFBaseError, base_lineage, convert_gguf, gguf_source, is_gguf_base

    if not is_gguf_base(base):
        raise BaseAddError(f"{base}: give a .gguf file or 'smollm2' (other bases come from 'honed consolidate')")
    if track is not None and store.get_track(track) is None:
        known = ", ".join(t.name for t in store.list_tracks())
        raise BaseAddError(f"--track {track}: no such track (tracks: {known}); add it with 'honed track add'")
    try:
        source_file = gguf_source(base)
        converted = convert_gguf(source_file)
    except GGUFBaseError as exc:
        raise BaseAddError(str(exc)) from exc
    lineage = base_lineage(converted, source_file)
    source = base if base == SMOLLM2 else lineage["gguf"]
    latest = store.get_base()
    version = 0 if latest is None else latest.version + 1
    target = workspace.bases_dir / f"v{version}"
    if target.exists():
        raise BaseAddError(f"{target} already exists but base v{version} is not recorded; honed never "
                           "overwrites a base: move that directory away and try again")
    workspace.bases_dir.mkdir(parents=True, exist_ok=True)
    place_base(converted, target)
    recorded = store.add_base(source, description=description or f"GGUF {Path(lineage['gguf']).name}",
                              lineage=lineage)
    if recorded != version:  # another writer took the number meanwhile
        raise BaseAddError(f"base v{version} was recorded meanwhile; this one is v{recorded}, its files at {target}")
    if track is not None:
        _move_track(workspace, store, track, version)
    return AddedBase(version, target, source, lineage, track)


def _move_track(workspace: Workspace, store, track: str, version: int) -> None:
    """Point ``track`` at base ``version``; its adapter (trained on another base) stops
    being live there, as after a consolidation."""
    from honed.registry.deployment import sync_pointer

    store.set_track_base(track, version)
    if store.deployed_adapter(track) is not None:
        store.switch_deployment(track, None, action="rebase", reason=f"track moved onto base v{version}")
    sync_pointer(workspace, store, track)
