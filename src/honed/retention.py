"""What honed keeps on disk, and what it lets go: the free-space floor, the size cap, and
``honed gc``.

A daemon that learns every hour fills its disk unless something decides what stays.
What always stays: every base version, each track's deployed adapter and the adapters of
its last ``storage.keep_deployments`` deployments, any run a job may still continue (its
job queued, running, paused or set aside), and every manifest, metrics file and store
record. What goes, by policy:

- the checkpoints of finished runs, ``storage.checkpoint_days`` after the run ended;
- the weights of rejected candidates, and of adapters superseded past the deployment
  history kept, ``storage.rejected_days`` after they were made (their evaluation and
  verdict stay in the store, and ``adapters show`` still has their numbers);
- hidden staging directories a killed write left behind, a day old.

What a user added (the originals of ingested files in ``datasets/received/`` and
exports) is listed but only removed with ``--yes``; the daemon's own collection never
touches it. Every removal is appended to ``logs/gc.jsonl``.

Below ``storage.min_free_gb`` free (or above ``storage.max_gb`` of artefacts after a
collection) the daemon starts nothing new, and says why in ``honed status``, ``honed
doctor`` and the waiting job's events. Torch-free.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from honed.store import Store
    from honed.workspace import Workspace

log = logging.getLogger(__name__)

GB = 2**30
STALE_STAGING = timedelta(days=1)
ACTIVE_JOB_STATES = ("queued", "running", "evaluating", "paused", "skipped")


@dataclass(frozen=True)
class Removal:
    """One thing ``honed gc`` would remove (or removed), and why."""

    path: str
    bytes: int
    why: str
    user: bool = False  # added by a user: removed only with --yes


@dataclass
class Collection:
    """A plan of removals; after :func:`collect`, what was done."""

    removals: list[Removal] = field(default_factory=list)
    removed: list[Removal] = field(default_factory=list)
    kept_for_user: list[Removal] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removals)

    def as_json(self) -> dict[str, Any]:
        return {"would_free_bytes": self.bytes, "removals": [asdict(r) for r in self.removals],
                "removed": [asdict(r) for r in self.removed],
                "kept_for_user": [asdict(r) for r in self.kept_for_user]}


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (or of the file itself); 0 when it is gone."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file() and not item.is_symlink():
                total += item.stat().st_size
        except OSError:
            continue
    return total


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding ``path`` (or its nearest existing parent)."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _age_from(when: datetime | None, path: Path) -> datetime:
    if when is not None:
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


# --- the plan ------------------------------------------------------------------------------


def plan(ws: Workspace, store: Store, *, now: datetime | None = None, include_user: bool = False) -> Collection:
    """What a collection would remove now (user files only with ``include_user``)."""
    now = now or datetime.now(UTC)
    cfg = ws.settings.storage
    out = Collection()
    out.removals += _finished_checkpoints(ws, store, now - timedelta(days=cfg.checkpoint_days))
    out.removals += _spent_adapters(store, now - timedelta(days=cfg.rejected_days), cfg.keep_deployments)
    out.removals += _stale_staging(ws, now - STALE_STAGING)
    for removal in _user_files(ws, store):
        (out.removals if include_user else out.kept_for_user).append(removal)
    return out


def _finished_checkpoints(ws: Workspace, store: Store, before: datetime) -> Iterator[Removal]:
    live = {job.run_id for job in store.list_jobs(states=ACTIVE_JOB_STATES) if job.run_id}
    for run in store.list_runs(limit=1_000_000):
        folder = ws.runs_dir / run.id / "checkpoints"
        if run.id in live or run.status == "running" or not folder.is_dir():
            continue
        if _age_from(run.ended_at, folder) > before:
            continue
        for checkpoint in sorted(folder.iterdir()):
            yield Removal(str(checkpoint), tree_bytes(checkpoint),
                          f"checkpoint of run {run.id}, {run.status} on {_age_from(run.ended_at, folder):%Y-%m-%d}")


def _spent_adapters(store: Store, before: datetime, keep_deployments: int) -> Iterator[Removal]:
    kept: set[int] = set()
    for track in store.list_tracks():
        deployed = store.deployed_adapter(track.name)
        if deployed is not None:
            kept.add(deployed.id)
        history = [d for d in store.list_deployments(track.name) if d.adapter_id is not None]
        kept.update(d.adapter_id for d in history[:keep_deployments] if d.adapter_id is not None)
    for adapter in store.list_adapters():
        folder = Path(adapter.path)
        if adapter.id in kept or not folder.exists() or adapter.created_at > before:
            continue
        if adapter.state == "rejected":
            why = f"weights of rejected candidate {adapter.id} ({adapter.name}); its numbers stay in the store"
        elif adapter.state == "retired":
            why = (f"weights of adapter {adapter.id} ({adapter.name}), superseded and past the last "
                   f"{keep_deployments} deployments kept; its numbers stay in the store")
        else:
            continue  # a candidate, one awaiting approval, the deployed one
        yield Removal(str(folder), tree_bytes(folder), why)


def _stale_staging(ws: Workspace, before: datetime) -> Iterator[Removal]:
    """Hidden staging directories left by killed writes, in the places honed writes."""
    places = [ws.adapters_dir, ws.bases_dir, ws.datasets_dir, ws.root / "exports"]
    places += [run / "checkpoints" for run in ws.runs_dir.iterdir()] if ws.runs_dir.is_dir() else []
    seen: set[Path] = set()
    for place in places:
        if not place.is_dir():
            continue
        for item in place.iterdir():
            if not item.name.startswith((".staging-", ".replaced-", ".trash-")) or item in seen:
                continue
            seen.add(item)
            if datetime.fromtimestamp(item.stat().st_mtime, UTC) <= before:
                yield Removal(str(item), tree_bytes(item), "left behind by a write that was killed")


def _user_files(ws: Workspace, store: Store) -> Iterator[Removal]:
    received = ws.local_datasets_dir / "received"
    ingested = {Path(d.source_path).resolve() for d in store.list_datasets()} if received.is_dir() else set()
    if received.is_dir():
        for item in sorted(received.iterdir()):
            if item.is_file() and item.resolve() in ingested:
                yield Removal(str(item), tree_bytes(item), "original of an ingested file (its dataset keeps "
                              "the records)", user=True)
    exports = ws.root / "exports"
    if exports.is_dir():
        for item in sorted(exports.iterdir()):
            if item.is_dir() and not item.name.startswith("."):
                yield Removal(str(item), tree_bytes(item), "an export", user=True)


# --- carrying it out --------------------------------------------------------------------------


def collect(ws: Workspace, store: Store, *, include_user: bool = False, dry_run: bool = False,
            now: datetime | None = None) -> Collection:
    """Plan a collection and, unless ``dry_run``, carry it out, logging each removal."""
    found = plan(ws, store, now=now, include_user=include_user)
    if dry_run:
        return found
    journal = ws.logs_dir / "gc.jsonl"
    journal.parent.mkdir(parents=True, exist_ok=True)
    for removal in found.removals:
        path = Path(removal.path)
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("gc: could not remove %s: %s", path, exc)
            continue
        found.removed.append(removal)
        with journal.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"at": datetime.now(UTC).isoformat(timespec="seconds"), **asdict(removal)}) + "\n")
    if found.removed:
        log.info("gc: removed %d items, %.1f MiB", len(found.removed), sum(r.bytes for r in found.removed) / 2**20)
    return found


# --- the floor ----------------------------------------------------------------------------------


def artefact_bytes(ws: Workspace) -> int:
    """What honed's artefacts take: runs, adapters, datasets, bases, exports."""
    places = [ws.runs_dir, ws.adapters_dir, ws.datasets_dir, ws.bases_dir, ws.root / "exports"]
    if ws.local_datasets_dir != ws.datasets_dir:
        places.append(ws.local_datasets_dir)
    return sum(tree_bytes(p) for p in places if p.exists())


def space_problem(ws: Workspace, measured_bytes: int | None = None) -> str | None:
    """Why nothing new may start now (free space below the floor, artefacts above the cap),
    or None. ``measured_bytes`` is the artefacts' size when the caller measured it."""
    cfg = ws.settings.storage
    for where in dict.fromkeys((ws.artifacts_dir, ws.root)):
        free = free_bytes(where)
        if free < cfg.min_free_gb * GB:
            return (f"only {free / GB:.2f} GiB free on the disk of {where}, below storage.min_free_gb = "
                    f"{cfg.min_free_gb:g}: nothing new starts until space is freed ('honed gc' shows what "
                    "can go)")
    if cfg.max_gb and measured_bytes is not None and measured_bytes > cfg.max_gb * GB:
        return (f"honed's artefacts take {measured_bytes / GB:.2f} GiB, above storage.max_gb = {cfg.max_gb:g} "
                "even after collecting: nothing new starts until space is freed ('honed gc --yes' removes "
                "your exports and ingested originals too)")
    return None
