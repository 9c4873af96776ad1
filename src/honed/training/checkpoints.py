"""Atomic checkpoint directories: the one place that writes, finds, validates and prunes them.

A checkpoint is a directory ``checkpoints_dir/step-XXXXXXXX`` holding whatever files the
trainer writes plus ``checkpoint.json`` (caller's meta, step, created_at, and every file's
size and sha256). It is filled in a hidden staging directory, fsynced, and renamed into
place; ``checkpoint.json`` is written last, so a directory with a parsable
``checkpoint.json`` whose files match it is complete. Hidden leftovers of killed writers:

- ``.staging-step-XXXXXXXX-<hex>``: a write that never reached its rename;
- ``.replaced-step-XXXXXXXX-<hex>``: the previous checkpoint of a step being re-written,
  moved aside until the new one is in place (the only copy while the final name is empty);
- ``.trash-step-XXXXXXXX-<hex>``: a pruned checkpoint whose removal was interrupted.

This module never imports torch: the trainer passes a callback that writes the tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from honed.atomic_files import DIRECTORY_PHASES, atomic_directory, fsync_dir, hidden_name, report_phase

log = logging.getLogger(__name__)

META_FILENAME = "checkpoint.json"

# Reported to atomic_files' phase hook in this order: atomic_directory's phases with the
# checkpoint's own in between; the two "old_*" phases only when a directory for the same
# step already exists (a re-run after resume).
PHASES: tuple[str, ...] = (
    "staging_created",
    "files_written",
    "files_synced",
    "meta_written",
    *DIRECTORY_PHASES[1:],
)

_FINAL_RE = re.compile(r"step-(\d{8,})")
_LEFTOVER_RE = re.compile(r"\.(staging|replaced|trash)-step-(\d{8,})-[0-9a-f]+")
_RESERVED_KEYS = frozenset({"step", "files", "created_at"})
_HASH_CHUNK = 1 << 20


class CheckpointError(Exception):
    """A checkpoint directory is missing, incomplete, or does not match its checkpoint.json."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint: its step, its directory, and its checkpoint.json as a dict."""

    step: int
    path: Path
    meta: dict = field(hash=False)


def _final_name(step: int) -> str:
    return f"step-{step:08d}"


def _sha256_and_fsync(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
        os.fsync(f.fileno())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sync_and_describe(root: Path) -> list[dict]:
    """fsync every file and subdirectory under root; return the files' path, size, sha256."""
    described: list[dict] = []

    def walk(directory: Path) -> None:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path = Path(entry.path)
            rel = path.relative_to(root).as_posix()
            if entry.is_symlink():
                raise CheckpointError(f"write_files created a symlink {rel!r}; write real files")
            if entry.is_dir():
                walk(path)
                fsync_dir(path)
            elif entry.is_file():
                if rel == META_FILENAME:
                    raise CheckpointError(
                        f"write_files must not create {META_FILENAME}; "
                        "write_checkpoint_atomically writes it"
                    )
                size = entry.stat().st_size
                described.append({"path": rel, "size": size, "sha256": _sha256_and_fsync(path)})
            else:
                raise CheckpointError(f"write_files created {rel!r}, which is not a regular file")

    walk(root)
    return described


def _write_and_fsync(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_checkpoint_atomically(
    checkpoints_dir: Path,
    step: int,
    write_files: Callable[[Path], None],
    meta: dict,
) -> CheckpointInfo:
    """Write checkpoint ``step`` so that a crash at any instant leaves a valid one behind.

    ``write_files(staging_dir)`` fills a hidden staging directory; this function fsyncs it,
    writes ``checkpoint.json`` last, renames it to ``step-XXXXXXXX`` and fsyncs the parent.
    An existing directory for the same step is moved aside first and removed only after the
    new one is in place; until then listing falls back to it. Returns only when the
    checkpoint is durable, so the caller may then record it complete in the store.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    clashing = _RESERVED_KEYS & meta.keys()
    if clashing:
        raise ValueError(f"meta must not contain the reserved keys {sorted(clashing)}")
    json.dumps(meta)  # not serialisable -> TypeError before anything touches the disk

    final = Path(checkpoints_dir) / _final_name(step)
    with atomic_directory(final) as staging:
        write_files(staging)
        report_phase("files_written")
        files = _sync_and_describe(staging)
        report_phase("files_synced")
        document = {
            **meta,
            "step": step,
            "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "files": files,
        }
        _write_and_fsync(
            staging / META_FILENAME, json.dumps(document, indent=2, sort_keys=True).encode()
        )
        report_phase("meta_written")
    log.debug("checkpoint step %d written to %s", step, final)
    return CheckpointInfo(step=step, path=final, meta=document)


def _step_from_name(name: str) -> int | None:
    match = _FINAL_RE.fullmatch(name) or _LEFTOVER_RE.fullmatch(name)
    return int(match.groups()[-1]) if match else None


def validate_checkpoint(path: Path, verify_hashes: bool = False) -> CheckpointInfo:
    """Check that ``path`` is a complete checkpoint; raise CheckpointError naming what is wrong.

    Checks that checkpoint.json parses, its step matches the directory name, and every
    listed file exists with the recorded size; with ``verify_hashes`` also its sha256.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory")
    meta_path = path / META_FILENAME
    try:
        raw = meta_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {META_FILENAME} is missing") from None
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"{meta_path}: not a JSON object")

    step = document.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{meta_path}: 'step' is {step!r}, not a non-negative int")
    named_step = _step_from_name(path.name)
    if named_step is not None and named_step != step:
        raise CheckpointError(f"{meta_path}: says step {step} but the directory is {path.name}")

    files = document.get("files")
    if not isinstance(files, list):
        raise CheckpointError(f"{meta_path}: 'files' is missing or not a list")
    for entry in files:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
        ):
            raise CheckpointError(f"{meta_path}: malformed file entry {entry!r}")
        rel = PurePosixPath(entry["path"])
        if rel.is_absolute() or ".." in rel.parts or str(rel) in ("", ".", META_FILENAME):
            raise CheckpointError(f"{meta_path}: file entry {entry['path']!r} is not allowed")
        file_path = path.joinpath(*rel.parts)
        try:
            st = file_path.lstat()
        except FileNotFoundError:
            raise CheckpointError(f"{path}: file {entry['path']!r} is missing") from None
        if not file_path.is_file() or file_path.is_symlink():
            raise CheckpointError(f"{path}: file {entry['path']!r} is not a regular file")
        if st.st_size != entry["size"]:
            raise CheckpointError(
                f"{path}: file {entry['path']!r} has {st.st_size} bytes, "
                f"{META_FILENAME} says {entry['size']}"
            )
        if verify_hashes and _sha256(file_path) != entry["sha256"]:
            raise CheckpointError(
                f"{path}: file {entry['path']!r} does not match its sha256 in {META_FILENAME}"
            )
    return CheckpointInfo(step=step, path=path, meta=document)


def _scan(checkpoints_dir: Path) -> tuple[dict[int, Path], dict[int, list[Path]], list[Path]]:
    """Final step directories, replaced-aside directories by step, and other leftovers."""
    finals: dict[int, Path] = {}
    asides: dict[int, list[Path]] = {}
    others: list[Path] = []
    if not checkpoints_dir.is_dir():
        return finals, asides, others
    for entry in sorted(os.scandir(checkpoints_dir), key=lambda e: e.name):
        final = _FINAL_RE.fullmatch(entry.name)
        if final:
            step = int(final[1])
            if entry.name == _final_name(step) and entry.is_dir(follow_symlinks=False):
                finals[step] = Path(entry.path)
            continue
        leftover = _LEFTOVER_RE.fullmatch(entry.name)
        if leftover and leftover[1] == "replaced":
            asides.setdefault(int(leftover[2]), []).append(Path(entry.path))
        elif leftover:
            others.append(Path(entry.path))
    return finals, asides, others


def _valid_or_none(path: Path) -> CheckpointInfo | None:
    try:
        return validate_checkpoint(path)
    except CheckpointError as exc:
        log.debug("not a complete checkpoint: %s", exc)
        return None


def _best_valid(paths: Iterable[Path]) -> CheckpointInfo | None:
    valid = [info for info in map(_valid_or_none, paths) if info is not None]
    return max(valid, key=lambda i: (str(i.meta.get("created_at", "")), i.path.name), default=None)


def list_complete_checkpoints(checkpoints_dir: Path) -> list[CheckpointInfo]:
    """Complete checkpoints in ``checkpoints_dir``, sorted by step, one per step.

    Directories not named ``step-XXXXXXXX`` or lacking checkpoint.json are ignored; ones
    that fail validation are skipped with a warning. A step whose directory is missing (a
    re-write killed between moving the old one aside and renaming the new one in) is
    served from the moved-aside copy.
    """
    finals, asides, _ = _scan(Path(checkpoints_dir))
    found: dict[int, CheckpointInfo] = {}
    for step, path in finals.items():
        if not (path / META_FILENAME).exists():
            continue
        try:
            found[step] = validate_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping incomplete checkpoint: %s", exc)
    for step, paths in asides.items():
        if step not in found and (info := _best_valid(paths)) is not None:
            log.info("checkpoint step %d found only in its moved-aside copy %s", step, info.path)
            found[step] = info
    return [found[step] for step in sorted(found)]


def latest_complete_checkpoint(
    checkpoints_dir: Path, allowed_steps: AbstractSet[int] | None = None
) -> CheckpointInfo | None:
    """The complete checkpoint with the highest step, or None.

    ``allowed_steps`` are the steps the store recorded complete: a directory on disk the
    store never recorded (killed after the rename, before the record) is not returned.
    None trusts disk validation alone.
    """
    for info in reversed(list_complete_checkpoints(checkpoints_dir)):
        if allowed_steps is None or info.step in allowed_steps:
            return info
    return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_stale_staging(checkpoints_dir: Path) -> list[Path]:
    """Clean up after killed writers and pruners; return the paths removed.

    Staging and trash directories are removed. A moved-aside old checkpoint is renamed back
    to ``step-XXXXXXXX`` when that name is empty (its re-write was killed before the
    rename), removed when a valid checkpoint holds the name, and kept otherwise. Call it
    only while no writer is running in ``checkpoints_dir`` (e.g. before resuming).
    """
    checkpoints_dir = Path(checkpoints_dir)
    finals, asides, others = _scan(checkpoints_dir)
    removed: list[Path] = []
    changed = False
    for path in others:
        _remove(path)
        removed.append(path)
    for step, paths in asides.items():
        final = checkpoints_dir / _final_name(step)
        remaining = list(paths)
        if not os.path.lexists(final):
            best = _best_valid(paths)
            if best is not None:
                os.rename(best.path, final)
                remaining.remove(best.path)
                changed = True
                log.info("restored checkpoint step %d from %s", step, best.path)
        if _valid_or_none(final) is None and os.path.lexists(final):
            log.warning("keeping %s: %s is not a valid checkpoint", remaining, final)
            continue
        for path in remaining:
            _remove(path)
            removed.append(path)
    if removed or changed:
        fsync_dir(checkpoints_dir)
    for path in removed:
        log.info("removed stale checkpoint leftover %s", path)
    return removed


def prune_checkpoints(
    checkpoints_dir: Path, keep_last: int, protect: AbstractSet[int] = frozenset()
) -> list[Path]:
    """Delete complete checkpoints except the last ``keep_last`` and the ``protect`` steps.

    Each is renamed to a hidden trash name first (one parent fsync for all), then removed,
    so a kill mid-delete never leaves a half-deleted ``step-XXXXXXXX`` that looks real.
    Directories that fail validation are left alone. Returns the paths removed.
    """
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, got {keep_last}")
    checkpoints_dir = Path(checkpoints_dir)
    complete = list_complete_checkpoints(checkpoints_dir)
    kept = {info.step for info in complete[max(len(complete) - keep_last, 0):]} | set(protect)
    doomed = [info for info in complete if info.step not in kept]
    if not doomed:
        return []
    _, asides, _ = _scan(checkpoints_dir)
    trash: list[Path] = []
    for info in doomed:
        # Asides first: otherwise listing would resurrect the step from them.
        for aside in asides.get(info.step, []):
            if aside != info.path:
                _remove(aside)
        target = checkpoints_dir / hidden_name("trash", _final_name(info.step))
        os.rename(info.path, target)
        trash.append(target)
    fsync_dir(checkpoints_dir)
    for target in trash:
        shutil.rmtree(target)
    for info in doomed:
        log.info("pruned checkpoint step %d (%s)", info.step, info.path)
    return [info.path for info in doomed]
